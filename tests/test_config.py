"""Settings: the brake's limit, parsed and applied."""

from __future__ import annotations

import pytest

from p2psync.config import DeleteLimit
from p2psync.errors import ConfigError


@pytest.mark.parametrize(
    ("deletions", "files", "allowed"),
    [(10, 10, True), (11, 20, False), (10, 20, True), (11, 22, True), (12, 22, False), (500, 1000, True)],
)
def test_the_default_brake_is_half_the_folder_once_over_ten(deletions: int, files: int, allowed: bool) -> None:
    assert DeleteLimit().allows(deletions, files) is allowed


def test_a_count_a_share_and_off() -> None:
    assert DeleteLimit.parse("3").allows(3, 4) and not DeleteLimit.parse("3").allows(4, 1000)
    assert DeleteLimit.parse("20%").allows(2, 10) and not DeleteLimit.parse("20%").allows(3, 10)
    assert DeleteLimit.parse("100%").allows(10**6, 1)
    assert DeleteLimit.parse(" 0 ").allows(0, 5) and not DeleteLimit.parse("0").allows(1, 5)


@pytest.mark.parametrize("text", ["", "lots", "-1", "1.5", "101%", "5 files", "%"])
def test_bad_limits_say_what_was_wrong(text: str) -> None:
    with pytest.raises(ConfigError, match="max-delete"):
        DeleteLimit.parse(text)
