"""Every use of aiohttp's private API, in one package (STYLE: "Private framework APIs in one
place"). tests/test_aiohttp_private.py has one test per hook, named after it, that fails
when an aiohttp upgrade moves or changes what the hook relies on. client.py holds the
client protocol's hooks, server.py the server protocol's, response.py the relayed answers'.

Hooks:
- `ResponseHandler` (aiohttp.client_proto): the client protocol upstream.py drives
  directly; `CheckedResponseHandler` overrides its `data_received` to hold each raw
  response head to proxy/http1.py before aiohttp's lenient parser sees it, and reports a
  broken one through `set_exception`, which its `read()` raises.
- `serialize_headers` (aiohttp.http_writer._serialize_headers): the C head serializer,
  which refuses a value with CR, LF or NUL (ValueError).
- `drain` (BaseProtocol._drain_helper): waits until a paused transport may be written to.
- `RequestHandler` (aiohttp.web_protocol): the server protocol of `keyhop serve`;
  `GuardedRequestHandler` overrides `data_received` and reads `_waiter` (set while the
  handler waits for a request head), `_request_count` (bumped by the parser for each head
  it completes or refuses), `_messages` (the parsed requests, with their bodies),
  `_upgraded`, `_force_close`/`_close` and `_loop` to time and count the bytes of each request head
  while it arrives; aiohttp limits each line, not the head. The express lane (proxy/lane.py)
  takes parsed requests off `_messages` while `start()` is parked on `_waiter` (and keeps it
  parked through `close()` while it serves one), and keeps aiohttp's own bookkeeping as
  `start()` would: `_parser.message_consumed()` (once the lane has answered),
  `_manager.requests_count`, `_buffer_paused`, `_msg_queue_resume_size` and
  `_resume_reading_if_drained()` (a pipeline past aiohttp's queue limit pauses reading),
  `_task_handler` (start()'s task, cancelled when a request given back loses its client
  before start() runs), `_request_in_progress` and `_handler_waiter` (which `shutdown()`
  waits on), `_keepalive_handle`, `_next_keepalive_close_time` and `_process_keepalive`.
- `StreamResponse._write_headers` (with `_req`, `_status`, `_reason`, `_headers`,
  `_payload_writer`, `_send_headers_immediately`) and `StreamWriter._headers_buf`: a relayed
  head holding obs-text is written with its bytes as they came (aiohttp's C serializer drops
  them).
- `RequestHandler.finish_response` (per answer start() writes): overridden to start the head
  clock of a head that began arriving behind that answer, and to let the lane take a request
  that arrives before start() parks again; `_request_factory` (called by start() as it takes
  a request off `_messages`) is wrapped to end that window.
- `CheckedResponseHandler.expect_answer` reads `_parser` and `_skip_payload` to keep a
  kept-alive connection's response parser; `whole_body` joins a StreamReader's `_buffer`.
- `CheckedResponseHandler.feed_data` / `set_exception` (DataQueue): a parsed answer or a
  failure goes to the express lane's listener instead of the queue `read()` waits on; the
  listener's `whole` may take a plain answer before `ResponseHandler.data_received` and its
  parser see it (the parser then reads the next answer from its start), only when
  `PLAIN_PARSER`: aiohttp.client_proto's `HttpResponseParser` is aiohttp's C parser
  (`http_parser.HttpResponseParserC`) and `helpers.DEBUG` is off (its lax mode).
- `CheckedResponseHandler.data_received` sets `_should_close` (read by should_close) before
  aiohttp's parser hands an answer on when bytes past its Content-Length came in its
  segment, and reads `_skip_payload` for a HEAD's answer (no body follows its head).
- `rfc822_formatted_time` (aiohttp.helpers): the Date header aiohttp's responses carry.
- `StreamResponse._prepare_headers` (aiohttp.web_response): `RelayedResponse` and
  `RelayedStreamResponse` take out the default Content-Type and the Server header aiohttp
  adds to every response, when the upstream did not send them (relay.py).
- `web.Server.__call__` builds each connection's protocol from the server's private `_loop`
  and `_kwargs`; `ProtocolServer` does the same with a protocol class of keyhop's.
"""

from __future__ import annotations

from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http_parser import RawRequestMessage, RawResponseMessage
from aiohttp.http_writer import _serialize_headers as serialize_headers
from aiohttp.streams import EMPTY_PAYLOAD

from proxy.aiohttp_private.client import AnswerListener, CheckedResponseHandler, drain
from proxy.aiohttp_private.response import RelayedResponse, RelayedStreamResponse, relayed
from proxy.aiohttp_private.server import (
    Express,
    GuardedRequestHandler,
    ProtocolServer,
    handover_note,
)

__all__ = [
    "AnswerListener",
    "CheckedResponseHandler",
    "EMPTY_PAYLOAD",
    "Express",
    "GuardedRequestHandler",
    "ProtocolServer",
    "RawRequestMessage",
    "RawResponseMessage",
    "RelayedResponse",
    "RelayedStreamResponse",
    "drain",
    "handover_note",
    "relayed",
    "rfc822_formatted_time",
    "serialize_headers",
]
