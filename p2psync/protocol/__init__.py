"""Sans-IO wire protocol: build and parse every message, bytes in, values out.

`messages`: peer <-> tracker (classic JSON lines and the negotiated extensions);
`requests`: peer <-> peer (`name\\n` -> `Content-Length: N\\n` + N bytes);
`auth`: members only, the group-key handshake and per-line tags. No
socket, file, clock or thread is touched here (a ruff banned-api rule fences it).
"""

from .messages import (
    EXTENDED_MARK,
    FEATURES,
    MAX_FILES_PER_MESSAGE,
    MAX_WAIT_S,
    DirectoryEntry,
    FileInfo,
    Listing,
    PeerMessage,
    apply_delta,
    decode_directory,
    decode_entry,
    decode_listing,
    decode_peer_message,
    encode_directory,
    encode_init,
    encode_keepalive,
    encode_listing,
)
from .requests import (
    CONTENT_LENGTH,
    KEEP_OPEN,
    FileRequest,
    decode_reply,
    decode_request,
    encode_header,
    encode_refusal,
    encode_request,
)

__all__ = [
    "CONTENT_LENGTH",
    "EXTENDED_MARK",
    "FEATURES",
    "KEEP_OPEN",
    "MAX_FILES_PER_MESSAGE",
    "MAX_WAIT_S",
    "DirectoryEntry",
    "FileInfo",
    "FileRequest",
    "Listing",
    "PeerMessage",
    "apply_delta",
    "decode_directory",
    "decode_entry",
    "decode_listing",
    "decode_peer_message",
    "decode_reply",
    "decode_request",
    "encode_directory",
    "encode_header",
    "encode_init",
    "encode_keepalive",
    "encode_listing",
    "encode_refusal",
    "encode_request",
]
