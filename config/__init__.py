"""The stack model and its loader."""
from config.loader import SANDBOX_STACK, StackConfigError, load_stack, parse_stack
from config.model import SecretNotFound, Stack

__all__ = ["SANDBOX_STACK", "SecretNotFound", "Stack", "StackConfigError", "load_stack", "parse_stack"]
