/**
 * A reader of `text/event-stream` (server-sent events) over a `fetch` response body, as the
 * HTML standard parses it: `event:`, `data:` (joined with newlines), `id:`, comment lines
 * ignored, an event dispatched at a blank line.
 */

/** One event of a stream. */
export interface StreamEvent {
  /** The event's type (`message` when the server named none). */
  readonly event: string;
  /** The event's data lines, joined with `\n`. */
  readonly data: string;
  /** The last `id:` seen (the LSN for the wallet stream); resume with it as `lastEventId`. */
  readonly id: string | undefined;
}

/** The events of a stream body, until it ends or the reader is cancelled. */
export async function* readEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<StreamEvent> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let event = "";
  let data: string[] = [];
  let id: string | undefined;
  try {
    for (let finished = false; !finished; ) {
      const { value, done } = await reader.read();
      if (done) {
        // A CR held back for a LF that never came ends its line after all.
        finished = true;
        buffer += buffer.endsWith("\r") ? "\n" : "";
      } else {
        buffer += decoder.decode(value, { stream: true });
      }
      for (;;) {
        const end = buffer.search(/\r\n|\r|\n/);
        // A CR at the end of what has arrived may be the first half of a CR LF: wait for more.
        if (end < 0 || (end === buffer.length - 1 && buffer[end] === "\r")) {
          break;
        }
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
        if (line === "") {
          if (data.length > 0) {
            yield { event: event || "message", data: data.join("\n"), id };
          }
          event = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) {
          continue;
        }
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) {
          text = text.slice(1);
        }
        if (field === "event") {
          event = text;
        } else if (field === "data") {
          data.push(text);
        } else if (field === "id" && !text.includes("\0")) {
          id = text;
        }
      }
    }
  } finally {
    await reader.cancel().catch(() => undefined);
  }
}
