"""`python -m mf2 COMMAND ...`, the same as `mf2 COMMAND ...` (e.g. `accelerate launch -m mf2 analyze ...`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
