/**
 * The event-stream reader on its own: line endings of every kind, data over several lines,
 * comments, ids, and chunks cut anywhere (a multi-byte character split across two reads).
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { readEvents } from "../src/index.js";

function body(chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      chunks.forEach((chunk) => controller.enqueue(chunk));
      controller.close();
    },
  });
}

test("events across chunk boundaries, CR LF and CR endings, comments and ids", async () => {
  const text = ": keep-alive\n\nid: 7\r\nevent: wallet\r\ndata: {\"balance\":\"€5\"}\r\n\r\nevent: wallet\rdata: a\rdata: b\rid: 9\r\rdata: no type\n\n";
  const bytes = new TextEncoder().encode(text);
  // Every split point, one byte at a time at the worst.
  for (const size of [1, 2, 3, 7, bytes.length]) {
    const chunks: Uint8Array[] = [];
    for (let i = 0; i < bytes.length; i += size) {
      chunks.push(bytes.slice(i, i + size));
    }
    const events = [];
    for await (const event of readEvents(body(chunks))) {
      events.push(event);
    }
    assert.deepEqual(events, [
      { event: "wallet", data: '{"balance":"€5"}', id: "7" },
      { event: "wallet", data: "a\nb", id: "9" },
      { event: "message", data: "no type", id: "9" },
    ], `chunks of ${size}`);
  }
});

test("a stream that ends right after a CR still ends its last event", async () => {
  const events = [];
  for await (const event of readEvents(body([new TextEncoder().encode("data: last\r\r")]))) {
    events.push(event);
  }
  assert.deepEqual(events, [{ event: "message", data: "last", id: undefined }]);
});
