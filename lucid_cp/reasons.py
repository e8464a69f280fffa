"""The wire strings of ErrorReason values ("LUCID_ERR_1002"), read from their descriptors: for
google.rpc.ErrorInfo (``rpc.status``) and for answers that carry a code per item (a batch's
results), which cores build without the server layer."""

from __future__ import annotations

from lucid_cp.api.lucid.common.v1 import errors_pb2, options_pb2


def reason_string(reason: int) -> str:
    """The wire string of an ErrorReason ("LUCID_ERR_1002"), read from its descriptor."""
    value = errors_pb2.ErrorReason.DESCRIPTOR.values_by_number[reason]
    return str(value.GetOptions().Extensions[options_pb2.wire])
