"""Single byte ranges for the local servers (Python standard library only): reading a `Range`
header, writing `Content-Range`, and sending the bytes a range names.

    from http_range import Unsatisfiable, content_range, parse_range, send_file_bytes
"""

import re

SINGLE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 1 << 20


class Unsatisfiable(ValueError):
    """The range names no byte of the file: the answer is a 416."""


def parse_range(header, size, suffix=True):
    """(start, end), inclusive, for a single satisfiable range of a `size`-byte file; None when
    there is no range to honour (none, multi-range or malformed: the whole body is the answer,
    as the Hub's CDN may give). Raises Unsatisfiable. `suffix`: whether `bytes=-n` (the last n
    bytes) is a range; when not, such a header is ignored like a malformed one."""
    match = SINGLE.match(header.strip()) if header else None
    if not match:
        return None
    first, last = match.groups()
    if first == "":
        return suffix_range(int(last), size) if last and suffix else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise Unsatisfiable
    return start, end


def suffix_range(length, size):
    """The last `length` bytes (all of them when the file is shorter)."""
    if length == 0:
        raise Unsatisfiable
    return max(size - length, 0), size - 1


def content_range(size, span=None):
    """The Content-Range value for `span` (start, end) of a `size`-byte file, or for a 416."""
    return f"bytes {span[0]}-{span[1]}/{size}" if span else f"bytes */{size}"


def send_file_bytes(path, start, length, out):
    """Writes `length` bytes of the file from `start` to `out` (fewer where the file ends
    sooner), a chunk at a time so large weight files are never read whole."""
    with open(path, "rb") as f:
        f.seek(start)
        while length > 0:
            chunk = f.read(min(length, CHUNK))
            if not chunk:
                break
            out.write(chunk)
            length -= len(chunk)
