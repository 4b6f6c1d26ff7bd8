"""The stack model and its loader."""
from config.loader import StackConfigError, load_stack, parse_stack, parse_stack_text
from config.model import SecretNotFound, Stack

__all__ = ["SecretNotFound", "Stack", "StackConfigError", "load_stack", "parse_stack", "parse_stack_text"]
