"""Served evaluation against in-process generation: the same questions (the demo's test split), answered by the
merged demo model in this process (`medtune eval`, batched `generate`) and through an OpenAI-compatible server
(`medtune eval --served`) with 1, 4 and 16 requests in flight. The figure is each evaluation's own
`inference_seconds` (questions in, answers out; model loading and metrics aside).

    python benchmarks/served_eval.py [--workdir /tmp/medtune-served-bench]        # starts `transformers serve`
    python benchmarks/served_eval.py --url http://localhost:8000 --served-model NAME --recipe RUN/recipe.yaml \
        [model.name_or_path=...]                                                   # a server you started (vLLM)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def medtune(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "medtune.cli", *args], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"medtune {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def start_server(model: Path, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["transformers", "serve", str(model), "--port", str(port), "--device", "cpu"],
                              stdout=open(log, "w"), stderr=subprocess.STDOUT)
    for _ in range(600):
        try:
            urlopen(f"http://localhost:{port}/v1/models", timeout=2).read()
            return server, f"http://localhost:{port}"
        except OSError:
            time.sleep(0.5)
    sys.exit(f"transformers serve did not start: {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/medtune-served-bench"))
    parser.add_argument("--url", help="a running server (default: start `transformers serve` with the merged demo)")
    parser.add_argument("--served-model", help="its model's name (with --url)")
    parser.add_argument("--recipe", type=Path, help="the recipe to evaluate (with --url; default: the demo's)")
    parser.add_argument("--in-flight", default="1,4,16")
    parser.add_argument("overrides", nargs="*", help="recipe overrides for the in-process row (with --url)")
    args = parser.parse_args()

    run = args.workdir / "demo" / "run-lora"
    if args.url:
        recipe, url, served_model, overrides = args.recipe, args.url, args.served_model, args.overrides
        server = None
    else:
        if not (run / "eval" / "finetuned.json").is_file():
            medtune("demo", "--workdir", str(args.workdir / "demo"))
        if not (run / "merged" / "config.json").is_file():
            medtune("export", str(run), "--merge")
        recipe, served_model = run / "recipe.yaml", str(run / "merged")
        overrides = [f"model.name_or_path={run / 'merged'}"]
        server, url = start_server(run / "merged", args.workdir / "serve.log")
    eval_dir = run / "eval" if not args.url else Path(recipe).parent / "eval"
    rows = []
    try:
        medtune("eval", str(recipe), *overrides, "--name", "bench-in-process")
        rows.append(("in process (`generate`, batch 16)", eval_dir / "bench-in-process.json"))
        for n in args.in_flight.split(","):
            name = f"bench-served-{n}"
            for stale in eval_dir.glob(f"{name}*"):
                stale.unlink()
            medtune("eval", str(recipe), "--served", url, "--served-model", served_model, "--name", name,
                    "--requests-in-flight", n)
            rows.append((f"served, {n} in flight", eval_dir / f"{name}.json"))
    finally:
        if server:
            server.terminate()
    import torch
    import transformers

    print(f"{datetime.date.today()} | {platform.node()} ({platform.machine()}, {os.cpu_count()} cores) | torch "
          f"{torch.__version__} | transformers {transformers.__version__} | server: "
          f"{'transformers serve (no continuous batching)' if server else url}\n")
    print("| evaluation | questions | seconds | questions/s | accuracy |\n|---|---|---|---|---|")
    for label, path in rows:
        result = json.loads(path.read_text())
        seconds = result["inference_seconds"]
        print(f"| {label} | {result['n']} | {seconds:.1f} | {result['n'] / seconds:.1f} | "
              f"{result['metrics'].get('accuracy')} |")


if __name__ == "__main__":
    main()
