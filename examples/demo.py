"""The demo `make demo` serves: a blocking pipeline streamed to a browser.

Plain ASGI, no framework, so it shows the core alone, under the app-wide
middleware: at most four jobs run at once, eight more wait in line and are told
their place, and /stats shows the live counters.

    hypercorn examples.demo:app --worker-class trio --bind 127.0.0.1:8000
    curl -N 'http://127.0.0.1:8000/progress?steps=10&delay=0.3'
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any
from urllib.parse import parse_qs

from asgi_sse import EventStreamMiddleware, Reporter, stream_progress

STAGES = ["load", "tokenize", "embed", "cluster", "rank", "summarise"]


class AnalysisPipeline:
    """Stands in for real blocking work: an LLM client, a CPU-heavy pipeline."""

    def execute(self, steps: int, delay: float, on_progress: Reporter) -> dict[str, Any]:
        for i in range(steps):
            time.sleep(delay)  # blocking on purpose: it runs in a worker thread
            on_progress(
                STAGES[i % len(STAGES)],
                {"done": i + 1, "total": steps, "percent": round(100 * (i + 1) / steps)},
            )
        return {"steps": steps, "summary": f"analysed in {steps} steps", "verdict": "très bien"}


PAGE = """<!doctype html>
<meta charset="utf-8">
<title>asgi-sse demo</title>
<style>
  body { font: 16px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; color: #222 }
  progress { width: 100%; height: 1.2rem }
  ol { font-family: ui-monospace, monospace; font-size: 14px; color: #555 }
  pre { background: #f4f4f4; padding: .75rem; border-radius: 6px }
  button { font: inherit; padding: .3rem 1rem }
</style>
<h1>asgi-sse demo</h1>
<p>A blocking pipeline runs in a worker thread; each step arrives as it happens.</p>
<p>
  <button id="start">Start</button> <button id="cancel" disabled>Cancel</button>
  steps <input id="steps" type="number" value="12" min="1" max="500" style="width:4rem">
</p>
<progress id="bar" max="100" value="0"></progress>
<ol id="log"></ol>
<pre id="result">No result yet.</pre>
<script>
  const $ = (id) => document.getElementById(id);
  let source = null;
  function stop(message) {
    if (source) source.close();  // closing the stream cancels the job on the server
    source = null;
    $("start").disabled = false; $("cancel").disabled = true;
    if (message) $("result").textContent = message;
  }
  $("start").onclick = () => {
    $("log").innerHTML = ""; $("bar").value = 0; $("result").textContent = "Running...";
    $("start").disabled = true; $("cancel").disabled = false;
    source = new EventSource(`/progress?steps=${$("steps").value}&delay=0.3`);
    source.addEventListener("queued", (e) => {
      $("result").textContent = `Waiting for a worker: ${JSON.parse(e.data).position} in line.`;
    });
    source.addEventListener("progress", (e) => {
      $("result").textContent = "Running...";
      const { step, details } = JSON.parse(e.data);
      $("bar").value = details.percent;
      const item = document.createElement("li");
      item.textContent = `${step} (${details.done}/${details.total})`;
      $("log").append(item);
    });
    source.addEventListener("completed", (e) =>
      stop(JSON.stringify(JSON.parse(e.data), null, 2)));
    source.addEventListener("error", (e) =>
      stop(e.data ? `Failed: ${e.data}` : "Connection lost."));
  };
  $("cancel").onclick = () => stop("Cancelled: the server stopped the job.");
</script>
"""


async def _respond(send: Any, status: int, content_type: bytes, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type)],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _arguments(query: bytes) -> tuple[int, float]:
    """Read and check the query before any stream starts: bad input is a 400."""
    params = parse_qs(query.decode("latin-1"))
    problem = "steps must be a whole number from 1 to 500, delay a number of seconds from 0 to 5"
    try:
        steps = int(params.get("steps", ["12"])[0])
        delay = float(params.get("delay", ["0.3"])[0])
    except ValueError:
        raise ValueError(problem) from None
    if not (1 <= steps <= 500 and 0 <= delay <= 5):
        raise ValueError(problem)
    return steps, delay


async def routes(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/":
        await _respond(send, 200, b"text/html; charset=utf-8", PAGE.encode())
    elif scope["path"] == "/progress":
        try:
            steps, delay = _arguments(scope["query_string"])
        except ValueError as exc:
            error = json.dumps({"type": "InvalidArguments", "detail": str(exc)}).encode()
            await _respond(send, 400, b"application/json", error)
            return
        await stream_progress(AnalysisPipeline().execute, steps, delay)(scope, receive, send)
    elif scope["path"] == "/stats":
        stats = json.dumps(dataclasses.asdict(app.stats)).encode()
        await _respond(send, 200, b"application/json", stats)
    else:
        await _respond(send, 404, b"text/plain", b"not found")


app = EventStreamMiddleware(routes, max_streams=4, queue=8)
