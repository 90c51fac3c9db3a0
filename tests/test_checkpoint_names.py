"""A checkpoint's name is one plain path component inside the store root."""

from __future__ import annotations

import pytest

from restartable import Checkpoint


@pytest.mark.parametrize("name", ["a/b", "/abs", "..", ".", "x\\y"])
def test_name_cannot_escape_the_store_root(name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        Checkpoint(name)
