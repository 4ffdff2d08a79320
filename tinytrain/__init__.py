"""tinytrain: on-device training compiler and runtime."""
__version__ = "0.1.0"
