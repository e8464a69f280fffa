"""PublishMessages: sends pipelined on one stream, as a NATS async publish.

Each request is checked and its create-only write submitted at once (``MessageQueue.submit_send``:
no task per message; concurrent writes share store txns), and answered by a SendResult as soon
as its write returns, so answers may overtake each other (each names its messageId). At most
``MAX_PENDING`` requests are read and not yet answered (an answer counts once the transport took
it): the reader stops reading meanwhile and HTTP/2 flow control holds the client, also one that
writes without reading its answers. A message that is invalid (the interceptor's field rules) or not the
caller's ends the stream with that error, after the answers of those before it; a store failure
ends it with the store's error the same way (the messages answered were stored; the others may
be, and answer the same when sent again)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable

from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb
from lucid_cp.auth.tokens import Principal
from lucid_cp.messaging.queue import MessageQueue, PendingSend
from lucid_cp.store.base import TxnResult
from lucid_cp.tasks import cancel

MAX_PENDING = 1000

# What the reader hands the response side: an answer, the end (None), or why the stream ends.
_Item = pb.SendResult | BaseException | None


async def publish(
    queue: MessageQueue,
    principal: Principal,
    requests: AsyncIterator[pb.SendMessageRequest],
    on_done: Callable[[Callable[[], None]], None],
) -> AsyncIterator[pb.SendResult]:
    answers: asyncio.Queue[_Item] = asyncio.Queue()
    # A slot is taken when a request is read and freed once its answer was handed to the
    # transport: a client that writes without reading is held by flow control.
    slots = asyncio.Semaphore(MAX_PENDING)
    reader = asyncio.create_task(
        _read(queue, principal, requests, answers, slots), name="publish-reader"
    )
    on_done(lambda: cancel(reader))
    try:
        while (item := await answers.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
            slots.release()
    finally:
        reader.cancel()


async def _read(
    queue: MessageQueue,
    principal: Principal,
    requests: AsyncIterator[pb.SendMessageRequest],
    answers: asyncio.Queue[_Item],
    slots: asyncio.Semaphore,
) -> None:
    pending: set[asyncio.Future[TxnResult]] = set()

    def answer(sent: PendingSend, done: asyncio.Future[TxnResult]) -> None:
        pending.discard(done)
        if done.cancelled():
            return
        failure = done.exception()
        try:
            answers.put_nowait(queue.send_result(sent, failure or done.result()))
        except Exception as exc:  # a store failure: the stream ends with it
            answers.put_nowait(exc)

    end: BaseException | None = None
    try:
        async for request in requests:
            await slots.acquire()
            try:
                sent = queue.submit_send(principal, request.message)
            except Exception:
                slots.release()
                raise
            pending.add(sent.future)
            sent.future.add_done_callback(functools.partial(answer, sent))
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # an invalid or foreign message: answer those before, then end
        end = exc
    if pending:
        await asyncio.wait(list(pending))
        await asyncio.sleep(0)  # the done callbacks run
    answers.put_nowait(end)
