"""Test helpers for people who build on restartable, starting with a conformance suite for row stores.

Every :class:`~restartable.store.RowStore` must pass :class:`RowStoreTests`
(needs pytest). A backend's test module subclasses it in a few lines::

    import pytest
    from restartable.store import MemoryRowStore
    from restartable.testing import RowStoreTests

    class TestMemory(RowStoreTests):
        @pytest.fixture
        def store(self, request):
            store = MemoryRowStore(request.node.nodeid)
            yield store
            MemoryRowStore.forget(request.node.nodeid)

        def replace_file(self, store, name, file, data):
            store.replace_file(name, file, data)
"""

from ._store import RowStoreTests

__all__ = ["RowStoreTests"]
