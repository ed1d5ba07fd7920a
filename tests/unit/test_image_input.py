"""The rules for images a request names: which addresses may be fetched, the operator's
allow-list, and telling base64 from a path."""

from __future__ import annotations

import base64
import ipaddress
import os

import pytest

from nexa.server.image_input import ImagePolicy, _looks_like_base64, address_allowed, parse_allowed_hosts
from support.images import encode, picture


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("93.184.215.14", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.5", False),
        ("172.16.3.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
    ],
)
def test_address_rules(address: str, allowed: bool) -> None:
    assert address_allowed(ipaddress.ip_address(address), ImagePolicy()) is allowed


def test_operator_allow_list() -> None:
    hosts, networks = parse_allowed_hosts(["10.0.0.0/8", "::1", "Images.Internal."])
    policy = ImagePolicy(allowed_hosts=hosts, allowed_networks=networks)
    assert address_allowed(ipaddress.ip_address("10.9.8.7"), policy)
    assert address_allowed(ipaddress.ip_address("::1"), policy)
    assert not address_allowed(ipaddress.ip_address("192.168.0.1"), policy)
    assert hosts == {"images.internal"}


def test_base64_or_path() -> None:
    assert _looks_like_base64(base64.b64encode(encode(picture("red"), "JPEG")).decode())  # starts with /9j/
    assert not _looks_like_base64("/srv/images/cat.png")
    assert not _looks_like_base64("photos/cat.jpg")
    assert os.sep == "/"  # the rules above assume POSIX paths
