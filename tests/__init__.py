"""medtune tests (a package, so that `tests.conftest` is ours even where a dependency installs a top-level
`tests`, as radgraph 0.1.18 does)."""
