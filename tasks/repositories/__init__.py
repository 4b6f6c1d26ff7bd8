"""Where backups live: one small interface, three stores, retries as a wrapper."""
from tasks.repositories.base import (
    ObjectInfo,
    ObjectNotFound,
    Repository,
    RepositoryError,
    RetriesExhausted,
    TransientRepositoryError,
    validate_key,
)
from tasks.repositories.factory import open_repository

__all__ = [
    "ObjectInfo", "ObjectNotFound", "Repository", "RepositoryError", "RetriesExhausted",
    "TransientRepositoryError", "open_repository", "validate_key",
]
