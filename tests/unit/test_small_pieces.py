"""Pure helpers: sizes, the login throttle, SMTP address and smuggling checks, trace headers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postfach.auth.throttle import LoginThrottle
from postfach.delivery import _SMUGGLE, has_smuggling, only_crlf, validate_address
from postfach.errors import SmtpError
from postfach.quota import format_size, parse_size
from postfach.supervisor import worker_cpu


@pytest.mark.parametrize(
    ("text", "n"),
    [("50M", 50 * 1024**2), ("500k", 500 * 1024), ("2G", 2 * 1024**3), ("1.5M", 1572864),
     ("1024", 1024), ("10MB", 10 * 1024**2), ("unlimited", 0), ("0", 0)],
)  # fmt: skip
def test_parse_size(text: str, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["12X", "", "-5M", "M", "5 M B"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_format_size() -> None:
    assert [format_size(n) for n in (0, 1024, 50 * 1024**2, 1536, 100)] == [
        "unlimited", "1K", "50M", "1.5K", "100B",
    ]  # fmt: skip


def test_throttle_doubles_per_user_and_per_address_and_forgets() -> None:
    t = LoginThrottle(base=0.5, ceiling=4, window=100)
    assert t.delay("alice", "192.0.2.1", 0) == 0
    t.failed("alice", "192.0.2.1", 0)
    assert t.delay("alice", "198.51.100.7", 1) == 0.5  # same user, other address
    assert t.delay("bob", "192.0.2.1", 1) == 0.5  # same address, other user
    for _ in range(5):
        t.failed("alice", "192.0.2.1", 2)
    assert t.delay("alice", "203.0.113.9", 3) == 4  # capped at the ceiling
    t.succeeded("alice")
    assert t.delay("alice", "203.0.113.9", 3) == 0
    assert t.delay("carol", "192.0.2.1", 3) == 4  # the address is still suspicious
    assert t.delay("carol", "192.0.2.1", 200) == 0  # forgotten after the window


@pytest.mark.parametrize(
    "data",
    [b"a\r\nb\n.\nMAIL", b"a\r\nb\n.\r\nMAIL", b"a\r\n.\nMAIL", b"a\r\nb\r.\r\nX", b"a\r\n.\rX"],
)
def test_smuggling_patterns(data: bytes) -> None:
    assert has_smuggling(data)


@pytest.mark.parametrize(
    "data", [b"a\r\n..\r\nb\r\n", b"a\nb\nc\n", b"x.\ny\r\n", b"a\r\n.b\r\n", b"3.\r\n"]
)
def test_innocent_data(data: bytes) -> None:
    assert not has_smuggling(data)


@pytest.mark.parametrize(
    "address",
    ["a%b@example.org", "b!a@example.org", '"a@b"@example.org', "@x:a@example.org", "a@", "",
     "no-at-sign", "a b@example.org"],
)  # fmt: skip
def test_addresses_we_do_not_route(address: str) -> None:
    with pytest.raises(SmtpError) as exc:
        validate_address(address)
    assert exc.value.code == 553 and exc.value.enhanced == "5.1.3"


def test_address_domain_is_normalised() -> None:
    assert validate_address("Alice@Example.ORG.") == ("Alice", "example.org")


@given(st.binary(max_size=60).map(lambda b: b.translate(bytes.maketrans(b"abc", b"\r\n."))))
@settings(max_examples=500, deadline=None)
def test_only_crlf_is_the_counting_definition(data: bytes) -> None:
    # Clean CRLF data: as many CRs and LFs as CRLF pairs (the definition the fast check replaces),
    # and the smuggling check with the caller's answer agrees with the full regex.
    crlf = data.count(b"\r\n")
    assert only_crlf(data) == (data.count(b"\r") == crlf == data.count(b"\n"))
    assert has_smuggling(data, only_crlf(data)) == (_SMUGGLE.search(data) is not None)


def test_each_worker_gets_a_cpu_of_its_own_only_with_one_worker_per_cpu() -> None:
    # the CPUs a cpuset or taskset leaves the server, in any order: worker i takes the i-th
    assert [worker_cpu(i, 2, {5, 3}) for i in range(2)] == [3, 5]
    assert [worker_cpu(i, 4, range(4)) for i in range(4)] == [0, 1, 2, 3]
    # more CPUs than workers, more workers than CPUs, a single worker: the scheduler decides
    assert worker_cpu(0, 2, range(8)) is None
    assert worker_cpu(1, 4, {0, 1}) is None
    assert worker_cpu(0, 1, {0}) is None
