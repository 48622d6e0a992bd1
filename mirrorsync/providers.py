"""Provider presets: `remote.provider: gmail` fills in what every Gmail account has in
common, so that a configuration needs only the username and the app registration.

Each preset gives remote settings, OAuth2 endpoints where the provider lets third
parties sign in with OAuth2 (Google, Microsoft), and folder rules. Anything the
configuration sets itself wins, key by key (`oauth2` and `folders` key by key too),
and a password source given without `auth` means `auth: password` (an app password).
docs/providers.md lists every value with the provider's document it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    remote: dict[str, Any]
    oauth2: dict[str, str] = field(default_factory=dict)
    folders: dict[str, list[str]] = field(default_factory=dict)


_IMAPS = {"port": 993, "tls": "imaps"}

PRESETS: dict[str, Preset] = {
    # Google: "IMAP, POP, and SMTP" (support.google.com/mail/answer/7126229),
    # "OAuth 2.0 for Mobile & Desktop Apps" (developers.google.com/identity/protocols/
    # oauth2/native-app): code flow with PKCE and a loopback redirect; Google's
    # device flow does not allow the mail scope. Scope: "The scope for IMAP, POP,
    # and SMTP access is https://mail.google.com/" (developers.google.com/gmail/
    # imap/xoauth2-protocol).
    "gmail": Preset(
        {"host": "imap.gmail.com", **_IMAPS, "auth": "xoauth2"},
        {
            "token_url": "https://oauth2.googleapis.com/token",
            "auth_url": "https://accounts.google.com/o/oauth2/v2/auth",
            "scope": "https://mail.google.com/",
        },
        # views whose every message is in another folder too
        {"exclude": ["[Gmail]/Important", "[Gmail]/Starred"]},
    ),
    # Microsoft: "Authenticate an IMAP, POP or SMTP connection using OAuth"
    # (learn.microsoft.com/exchange/client-developer/legacy-protocols/
    # how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth): host
    # outlook.office365.com:993, scope IMAP.AccessAsUser.All plus offline_access for
    # a refresh token; the device code flow of the Microsoft identity platform
    # (learn.microsoft.com/entra/identity-platform/v2-oauth2-device-code). "common"
    # serves both work accounts and Outlook.com ones.
    "outlook": Preset(
        {"host": "outlook.office365.com", **_IMAPS, "auth": "xoauth2"},
        {
            "token_url": "https://login.microsoftonline.com/common/oauth2/v2.0/token",
            "device_url": "https://login.microsoftonline.com/common/oauth2/v2.0/devicecode",
            "auth_url": "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
            "scope": "https://outlook.office.com/IMAP.AccessAsUser.All offline_access",
        },
    ),
    # Fastmail: "Server names and ports" (fastmail.help/hc/en-us/articles/1500000278342):
    # an app password; OAuth2 is only for apps Fastmail has registered.
    "fastmail": Preset({"host": "imap.fastmail.com", **_IMAPS, "auth": "password"}),
    # Apple: "iCloud Mail server settings for other email client apps"
    # (support.apple.com/en-us/102525): an app-specific password.
    "icloud": Preset({"host": "imap.mail.me.com", **_IMAPS, "auth": "password"}),
    # Yahoo: "IMAP server settings for Yahoo Mail" (help.yahoo.com/kb/SLN4075.html):
    # an app password.
    "yahoo": Preset({"host": "imap.mail.yahoo.com", **_IMAPS, "auth": "password"}),
}

_PASSWORD_KEYS = ("password", "password_command", "password_env")


def apply(section: dict[str, Any], folders: Any) -> tuple[dict[str, Any], Any]:
    """The remote section and the folders section with `section["provider"]`'s
    preset filled in where they do not say otherwise; unchanged without a provider.
    The provider's name is assumed checked."""
    name = section.get("provider")
    if name is None:
        return section, folders
    preset = PRESETS[name]
    remote = {k: v for k, v in preset.remote.items() if k != "auth"}
    remote.update({k: v for k, v in section.items() if k != "provider"})
    if "auth" not in section and not any(k in section for k in _PASSWORD_KEYS):
        remote["auth"] = preset.remote["auth"]
    if preset.oauth2 and isinstance(section.get("oauth2"), dict):
        remote["oauth2"] = {**preset.oauth2, **section["oauth2"]}
    if preset.folders and (folders is None or isinstance(folders, dict)):
        folders = {**preset.folders, **(folders or {})}
    return remote, folders
