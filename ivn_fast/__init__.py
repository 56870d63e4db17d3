"""ivn_fast: a performance-engineered trainer for InternVideo-Next video encoders."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # load_encoder pulls in torch: imported on first use so the entry points start fast
    if name == "load_encoder":
        from ivn_fast.export import load_encoder

        return load_encoder
    raise AttributeError(f"module 'ivn_fast' has no attribute {name!r}")
