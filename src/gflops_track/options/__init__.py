"""What each step can be asked (count, runtime, timing, peaks, training step): plain dataclasses and names whose
defaults are the only defaults in the project (the Hydra schema derives its config from them)."""
