"""The client the grader talks to its kernels with: jupyter_client's, ready as soon as the kernel is.

jupyter_client's ``wait_for_ready`` sends ``kernel_info`` and, once the reply and one message on IOPub have come, keeps
reading IOPub until nothing arrives for 0.2 s: a fixed 0.2 s before every notebook's first cell, and before every warm
kernel's warm-up. :class:`PromptKernelClient` is ready once IOPub brings the kernel's ``idle`` status for that
``kernel_info`` request, which the kernel publishes after its reply: the channel is then connected and holds no
earlier message of that request. When IOPub was not connected yet (a subscriber misses what was published before it
joined), it asks again, as jupyter_client does.
"""

from __future__ import annotations

import time
from queue import Empty

from jupyter_client.asynchronous import AsyncKernelClient

#: seconds to wait for the reply, then for the idle status after it (which comes at once when IOPub is connected),
#: before asking again
REPLY_WAIT, IDLE_WAIT = 1.0, 0.1


class PromptKernelClient(AsyncKernelClient):
    """An ``AsyncKernelClient`` whose ``wait_for_ready`` returns once the kernel has answered ``kernel_info`` on the
    shell channel and gone idle on IOPub (no fixed wait)."""

    async def wait_for_ready(self, timeout: float | None = None) -> None:
        """Return once the kernel is ready (see the module's docstring); a RuntimeError when it died first or did not
        answer within ``timeout`` seconds (None: no limit)."""
        deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        while True:
            request = self.kernel_info()
            if await self._replied(request) and await self._went_idle(request):
                return
            if not await self._async_is_alive():
                raise RuntimeError("Kernel died before replying to kernel_info")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout:g} seconds")

    async def _replied(self, request: str) -> bool:
        """Whether the ``kernel_info_reply`` to ``request`` came on the shell channel (older replies are dropped)."""
        reply = await self._first(self.shell_channel, REPLY_WAIT, lambda message: (
            message["msg_type"] == "kernel_info_reply" and message["parent_header"].get("msg_id") == request))
        if reply is not None:
            self._handle_kernel_info_reply(reply)
        return reply is not None

    async def _went_idle(self, request: str) -> bool:
        """Whether IOPub brought the kernel's ``idle`` status for ``request`` (what came before it is dropped)."""
        return await self._first(self.iopub_channel, IDLE_WAIT, lambda message: (
            message["msg_type"] == "status" and message["parent_header"].get("msg_id") == request
            and message["content"].get("execution_state") == "idle")) is not None

    @staticmethod
    async def _first(channel, seconds: float, wanted) -> dict | None:
        """The first message of ``channel`` for which ``wanted`` holds, within ``seconds`` (None: none came); the
        messages before it are dropped."""
        give_up = time.monotonic() + seconds
        while (left := give_up - time.monotonic()) > 0:
            try:
                message = await channel.get_msg(timeout=left)
            except Empty:
                return None
            if wanted(message):
                return message
        return None
