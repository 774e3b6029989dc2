"""medtune: fine-tune MedGemma 4B IT on medical image tasks with LoRA/QLoRA recipes."""
__version__ = "0.1.0"
