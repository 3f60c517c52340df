"""The grader's kernel client (``autograder/execute/client.py``): ready once the kernel answered ``kernel_info`` and went
idle on IOPub, with no fixed wait; what came before on either channel is dropped. With fake channels (the order of
messages), then with a real kernel (a cell's outputs arrive whole after it)."""

from __future__ import annotations

from queue import Empty

import pytest
from jupyter_core.utils import run_sync

from autograder.execute.client import PromptKernelClient
from autograder.execute.limits import LimitedKernelManager

pytestmark = pytest.mark.timeout(120)


class _Channel:
    """A channel that hands out ``messages`` in order, then raises Empty (as a timed-out ``get_msg`` does)."""

    def __init__(self, messages):
        self.messages = list(messages)
        self.empty = 0

    async def get_msg(self, timeout=None):
        if not self.messages:
            self.empty += 1
            raise Empty
        return self.messages.pop(0)


def _message(msg_type: str, parent: str, **content) -> dict:
    return {"msg_type": msg_type, "parent_header": {"msg_id": parent}, "content": content}


def _client(shell, iopub) -> PromptKernelClient:
    client = PromptKernelClient()
    client._shell_channel, client._iopub_channel = _Channel(shell), _Channel(iopub)
    return client


def test_ready_when_the_request_is_answered_and_idle_without_waiting_for_silence():
    later = _message("stream", "a cell", name="stdout", text="not this one's")
    client = _client(shell=[_message("kernel_info_reply", "an earlier request", protocol_version="5.3"),
                            _message("kernel_info_reply", "ask", protocol_version="5.3")],
                     iopub=[_message("status", "an earlier request", execution_state="idle"),
                            _message("status", "ask", execution_state="busy"),
                            _message("status", "ask", execution_state="idle"), later])
    assert run_sync(client._replied)("ask") and run_sync(client._went_idle)("ask")
    assert client.iopub_channel.messages == [later]  # nothing after the idle status was read
    assert client.shell_channel.empty == client.iopub_channel.empty == 0  # no timed-out read: no fixed wait


def test_not_ready_while_the_idle_status_of_its_own_request_has_not_come():
    client = _client(shell=[], iopub=[_message("status", "an earlier request", execution_state="idle"),
                                      _message("status", "ask", execution_state="busy")])
    assert not run_sync(client._went_idle)("ask")
    assert not run_sync(client._replied)("ask")


def test_a_real_kernel_is_ready_and_runs_a_cell_for_each_of_two_clients():
    async def run() -> list[str]:
        manager = LimitedKernelManager(kernel_name="python3")
        await manager.start_kernel()
        printed = []
        try:
            for _ in range(2):  # the second client connects to a kernel that is already running
                client = manager.client()
                assert isinstance(client, PromptKernelClient)
                client.start_channels()
                await client.wait_for_ready(timeout=60)
                reply = await client.execute_interactive(
                    "print(6 * 7)", timeout=30,
                    output_hook=lambda message: printed.append(message["content"].get("text", "")))
                assert reply["content"]["status"] == "ok"
                client.stop_channels()
        finally:
            await manager.shutdown_kernel(now=True)
        return printed

    assert [text for text in run_sync(run)() if text] == ["42\n", "42\n"]  # whatever loop an earlier test left
