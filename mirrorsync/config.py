"""Configuration: the YAML file, validated into frozen dataclasses.

TYPES ARE FIXED (other modules depend on them); the loader below is to be written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RemoteConfig:
    host: str
    username: str
    port: int  # resolved: 993 for imaps, 143 otherwise, unless given
    tls: str = "imaps"  # "imaps" | "starttls" | "none"
    password: str | None = None
    password_command: str | None = None
    password_env: str | None = None
    ca_file: Path | None = None
    timeout: float = 60.0  # seconds, for connect and for every read
    max_connections: int = 4


@dataclass(frozen=True)
class LocalConfig:
    path: Path  # expanded (~ and $VARS)
    layout: str = "nested"  # "nested" | "maildir++"


@dataclass(frozen=True)
class FolderFilter:
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def matches(self, name: str) -> bool:
        """IMAP-style patterns over canonical names ("/"-separated): `*` matches
        anything, `%` anything but "/". Included and not excluded."""
        raise NotImplementedError


@dataclass(frozen=True)
class SyncConfig:
    # Deleting more than this share of a folder's messages in one run needs --force ...
    max_delete_share: float = 0.5
    # ... unless fewer than this many messages would go.
    guard_min: int = 5


@dataclass(frozen=True)
class AccountConfig:
    name: str
    remote: RemoteConfig
    local: LocalConfig
    state_dir: Path
    folders: FolderFilter = field(default_factory=FolderFilter)
    sync: SyncConfig = field(default_factory=SyncConfig)


@dataclass(frozen=True)
class Config:
    path: Path
    accounts: dict[str, AccountConfig]


def default_path(env: Mapping[str, str]) -> Path:
    raise NotImplementedError


def load(path: Path, env: Mapping[str, str]) -> Config:
    raise NotImplementedError


def resolve_password(remote: RemoteConfig, env: Mapping[str, str]) -> str:
    raise NotImplementedError
