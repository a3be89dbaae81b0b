"""Where notifications may go: the network addresses a receiver may have.

A receiver is named by the state repository (``settings.notify``), so it must not turn
the daemon into a client of what only the daemon's network can reach: a cloud metadata
endpoint (``169.254.169.254`` hands out credentials), the host itself, the cluster's
private networks. Two classes of address:

- never a receiver, whatever the operator says: unspecified (``0.0.0.0``, ``::``, which
  reach the host itself), link-local (``169.254.0.0/16``, ``fe80::/10``), multicast,
  reserved, and the cloud metadata endpoints outside those ranges (``fd00:ec2::254``,
  ``100.100.100.200``);
- private: loopback, RFC 1918, ``fc00::/7`` and every other address that is not
  global; only when the operator allows it (``reconciler run --notify-allow-private``).

Names are resolved when a notification is sent, every address must pass, and the
address actually connected to is checked again before a byte is sent (see
:mod:`reconciler.daemon.notify`), so a DNS answer that changes in between gains nothing.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from urllib.parse import urlsplit

ALLOW_PRIVATE_FLAG = "--notify-allow-private"

_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


class Reach(StrEnum):
    """Whether an address may receive notifications: ``public`` always, ``private`` only
    with ``--notify-allow-private``, ``never`` (metadata, link-local, this host) at all."""

    PUBLIC = "public"
    PRIVATE = "private"  # allowed by the operator's flag only
    NEVER = "never"


def classify(address: str) -> tuple[Reach, str]:
    """(class, what the address is) of an IP address literal.

    Raises:
        ValueError: ``address`` is not an IP address.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # without an IPv6 scope id
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:169.254.169.254 is 169.254.169.254
            return classify(str(ip.ipv4_mapped))
        embedded = [a for a in (ip.sixtofour, *(ip.teredo or ())) if a is not None]
        worst = max((classify(str(a)) for a in embedded), key=_severity, default=None)
        if worst is not None and worst[0] is not Reach.PUBLIC:
            return worst[0], f"{worst[1]} (as an IPv4 address within {ip})"
    if ip in _METADATA:
        return Reach.NEVER, "a cloud metadata endpoint"
    if ip.is_unspecified or (ip.version == 4 and ip in _THIS_NETWORK):
        return Reach.NEVER, "unspecified (this host)"
    if ip.is_link_local:
        return Reach.NEVER, "link-local"
    if ip.is_multicast:
        return Reach.NEVER, "multicast"
    if ip.is_loopback:
        return Reach.PRIVATE, "loopback"
    if ip.is_reserved:
        return Reach.NEVER, "reserved"
    if ip.is_private:
        return Reach.PRIVATE, "private"
    if not ip.is_global:
        return Reach.PRIVATE, "not a global address"
    return Reach.PUBLIC, "public"


def _severity(found: tuple[Reach, str]) -> int:
    return (Reach.PUBLIC, Reach.PRIVATE, Reach.NEVER).index(found[0])


def refusal(address: str, allow_private: bool) -> str | None:
    """Why a notification may not be sent to ``address`` (an IP literal), or None."""
    reach, what = classify(address)
    if reach is Reach.NEVER:
        return f"{address} is {what}: never a notification receiver"
    if reach is Reach.PRIVATE and not allow_private:
        return (
            f"{address} is {what}: a notification goes there only when the daemon runs "
            f"with {ALLOW_PRIVATE_FLAG}"
        )
    return None


def literal_host(url: str) -> str | None:
    """The host of ``url`` when it is an IP address literal, else None."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    if host is None:
        return None
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    return host


__all__ = ["ALLOW_PRIVATE_FLAG", "Reach", "classify", "literal_host", "refusal"]
