"""Training benches: SST-2 against a plain Trainer, head and LoRA sweeps, the story task (Shakespeare, TinyStories)."""
