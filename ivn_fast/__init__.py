"""ivn_fast: a performance-engineered trainer for InternVideo-Next video encoders."""

__version__ = "0.1.0"
