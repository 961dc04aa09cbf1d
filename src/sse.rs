//! Incremental Server-Sent Events parser: bytes in (split anywhere), events out, with the byte offsets where each event ends.
//!
//! The parser follows the WHATWG "interpreting an event stream" rules on raw bytes. It does no IO,
//! reads no clock, never panics and, once its buffers have grown to the size of the largest line
//! seen, allocates nothing: a proxy can feed it every chunk it forwards.
//!
//! What a caller must know:
//! - `on_boundary` runs for every blank line, dispatched or not, so a caller can cut the stream into
//!   event blocks at the reported offsets.
//! - A CRLF split across two chunks is reported when its CR is seen (the offset points just past
//!   the CR); the LF that starts the next chunk is skipped silently and belongs to no boundary.
//! - Past `max_line_bytes` the parser stops for good: no more callbacks, and `finish()` reports true.
//! - `finish()` discards an unterminated final event, as the spec says, and only reports that it existed.

use memchr::{memchr, memchr2};

/// The UTF-8 byte order mark, which the spec strips from the very start of a stream.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// One dispatched event, borrowed from the parser's buffers; valid only during the callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` field value, or "" when none was given (the WHATWG default type "message").
    /// A name that is not valid UTF-8 is also reported as "".
    pub event: &'a str,
    /// The data field: all `data:` lines of the event joined with b'\n' (no trailing newline).
    pub data: &'a [u8],
}

/// The field buffers of the event being assembled. They live apart from the line buffer so that a
/// buffered line can be parsed into them without cloning it to satisfy the borrow checker.
#[derive(Debug, Default)]
struct Fields {
    /// Every `data` value seen so far, each followed by b'\n', as the spec's data buffer.
    data: Vec<u8>,
    event: Vec<u8>,
    last_id: Vec<u8>,
    retry: Option<u64>,
}

impl Fields {
    /// Applies one field line (neither blank nor a comment). Returns false when the data buffer
    /// would grow past `max`, so that the caller can stop parsing.
    fn apply(&mut self, line: &[u8], max: usize) -> bool {
        let (name, value) = match memchr(b':', line) {
            Some(colon) => {
                let (name, rest) = line.split_at(colon);
                let value = rest.get(1..).unwrap_or_default();
                // Only one leading space is part of the syntax; any further spaces are data.
                (name, value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                // The trailing separator is not counted, so the cap bounds the dispatched data.
                if self.data.len() + value.len() > max {
                    return false;
                }
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            // The spec ignores an id containing NUL, because it could not be sent back in a header.
            b"id" if memchr(0, value).is_none() => {
                self.last_id.clear();
                self.last_id.extend_from_slice(value);
            }
            b"retry" => {
                if let Some(ms) = parse_decimal(value) {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
        true
    }
}

/// Parses a `retry` value, which the spec accepts only when it is made of ASCII digits. A value too
/// large for u64 is ignored like any other invalid one.
fn parse_decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        acc.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// An incremental event-stream parser; see the module documentation.
#[derive(Debug)]
pub struct SseParser {
    max: usize,
    /// The start of a line that straddles a chunk end. Lines wholly inside a chunk never touch it.
    line: Vec<u8>,
    fields: Fields,
    /// How many BOM bytes have been matched at the stream start; 3 once the question is settled.
    bom: usize,
    /// The previous chunk ended with a CR, so an LF opening the next chunk completes that CRLF.
    pending_cr: bool,
    mid_event: bool,
    overflowed: bool,
}

impl SseParser {
    /// `max_line_bytes`: cap on the bytes buffered for one line / one event's data. Past it the parser
    /// stops parsing for the rest of the stream (see `overflowed`).
    pub fn new(max_line_bytes: usize) -> Self {
        SseParser {
            max: max_line_bytes,
            line: Vec::new(),
            fields: Fields::default(),
            bom: 0,
            pending_cr: false,
            mid_event: false,
            overflowed: false,
        }
    }

    /// Feeds one chunk. For every blank line (an event boundary) calls `on_boundary(event, end)`,
    /// where `end` is the offset in `chunk` just past the blank line's terminator, and `event` is
    /// `Some` when an event is dispatched there (at least one `data` field was seen) and `None` otherwise.
    pub fn feed(&mut self, chunk: &[u8], on_boundary: &mut impl FnMut(Option<SseEvent<'_>>, usize)) {
        if self.overflowed {
            return;
        }
        let mut pos = self.skip_bom(chunk);
        // The CR that ended the previous chunk already completed its line and reported any boundary,
        // so a following LF is the second half of that CRLF and is skipped without a callback.
        if self.pending_cr
            && let Some(&first) = chunk.get(pos)
        {
            self.pending_cr = false;
            pos += usize::from(first == b'\n');
        }
        while let Some(rest) = chunk.get(pos..).filter(|rest| !rest.is_empty()) {
            let Some(len) = memchr2(b'\r', b'\n', rest) else {
                // The line goes on in the next chunk, so this is the only case that copies bytes.
                if self.line.len() + rest.len() > self.max {
                    return self.overflow();
                }
                self.line.extend_from_slice(rest);
                self.mid_event = true;
                return;
            };
            let mut end = pos + len + 1;
            if rest.get(len) == Some(&b'\r') {
                match chunk.get(end) {
                    Some(b'\n') => end += 1,
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
            if self.line.len() + len > self.max {
                return self.overflow();
            }
            let line = rest.get(..len).unwrap_or_default();
            let ok = if self.line.is_empty() {
                self.end_line(line, end, on_boundary)
            } else {
                // Taking the buffer out lets `end_line` borrow `self` mutably; putting it back keeps
                // its capacity, so no allocation happens here either.
                let mut buffered = std::mem::take(&mut self.line);
                buffered.extend_from_slice(line);
                let ok = self.end_line(&buffered, end, on_boundary);
                buffered.clear();
                self.line = buffered;
                ok
            };
            if !ok {
                return self.overflow();
            }
            pos = end;
        }
    }

    /// Whether `chunk` opens with the LF of a CRLF split across reads: that byte belongs to the
    /// event that ended at the previous read's CR, not to the next one (`feed` skips it silently).
    pub fn continues_crlf(&self, chunk: &[u8]) -> bool {
        self.pending_cr && chunk.first() == Some(&b'\n')
    }

    /// True once a line exceeded `max_line_bytes`; from then on `feed` ignores all input (no callbacks).
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// True when bytes have been consumed since the last boundary (a partial line, or complete field
    /// or comment lines of an event not yet terminated by a blank line). False right after a boundary
    /// and at start. A partial BOM counts as consumed bytes; a complete one does not.
    pub fn is_mid_event(&self) -> bool {
        self.mid_event || (1..BOM.len()).contains(&self.bom)
    }

    /// Called at end of stream: the spec discards an unterminated final event, so this never
    /// dispatches; it returns whether such unterminated bytes existed, which is always the case
    /// after an overflow. It resets the event state, so a second call returns false.
    pub fn finish(&mut self) -> bool {
        let truncated = self.is_mid_event();
        self.line.clear();
        self.fields.data.clear();
        self.fields.event.clear();
        self.pending_cr = false;
        self.mid_event = false;
        self.bom = BOM.len();
        truncated
    }

    /// The value of the last valid `id` field seen, which the spec keeps across events.
    pub fn last_event_id(&self) -> &[u8] {
        &self.fields.last_id
    }

    /// The reconnection time from the last valid `retry` field, in milliseconds.
    pub fn retry_ms(&self) -> Option<u64> {
        self.fields.retry
    }

    /// Strips a BOM at the stream start, which may arrive split across chunks, and returns where
    /// the content of `chunk` begins. Once the stream start is behind, it returns 0 at once.
    fn skip_bom(&mut self, chunk: &[u8]) -> usize {
        let mut pos = 0;
        while let (Some(&expected), Some(&byte)) = (BOM.get(self.bom), chunk.get(pos)) {
            if byte == expected {
                self.bom += 1;
                pos += 1;
            } else {
                // Not a BOM after all: the bytes held back start the first line like any others.
                self.line.extend_from_slice(BOM.get(..self.bom).unwrap_or_default());
                self.mid_event |= self.bom > 0;
                self.bom = BOM.len();
            }
        }
        pos
    }

    /// Handles one complete line. Returns false when the data cap was passed.
    fn end_line(&mut self, line: &[u8], end: usize, on_boundary: &mut impl FnMut(Option<SseEvent<'_>>, usize)) -> bool {
        match line.first() {
            None => {
                self.dispatch(end, on_boundary);
                true
            }
            Some(b':') => {
                self.mid_event = true;
                true
            }
            Some(_) => {
                self.mid_event = true;
                self.fields.apply(line, self.max)
            }
        }
    }

    /// Reports a boundary, dispatching the assembled event when the data buffer is non-empty.
    fn dispatch(&mut self, end: usize, on_boundary: &mut impl FnMut(Option<SseEvent<'_>>, usize)) {
        self.mid_event = false;
        let fields = &mut self.fields;
        if fields.data.is_empty() {
            on_boundary(None, end);
        } else {
            let data = fields.data.strip_suffix(b"\n").unwrap_or(&fields.data);
            let event = std::str::from_utf8(&fields.event).unwrap_or("");
            on_boundary(Some(SseEvent { event, data }), end);
        }
        fields.data.clear();
        fields.event.clear();
    }

    /// Stops the parser for good and frees its buffers, since nothing will be parsed any more.
    fn overflow(&mut self) {
        self.overflowed = true;
        self.mid_event = true;
        self.line = Vec::new();
        self.fields.data = Vec::new();
        self.fields.event = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Ev = (String, Vec<u8>);
    /// Every boundary as (dispatched event, offset in the whole stream), then `finish()`, then `overflowed()`.
    type Run = (Vec<(Option<Ev>, usize)>, bool, bool);

    const CHAT: &[u8] = include_bytes!("../tests/fixtures/llama-cpp-python/chat-stream-include-usage-requested.sse");
    const COMPLETIONS: &[u8] = include_bytes!("../tests/fixtures/llama-cpp-python/completions-stream.sse");

    fn run_with(chunks: &[&[u8]], max: usize) -> Run {
        let mut parser = SseParser::new(max);
        let (mut out, mut base) = (Vec::new(), 0);
        for chunk in chunks {
            parser.feed(chunk, &mut |event, end| {
                let owned = event.map(|e| (e.event.to_owned(), e.data.to_vec()));
                out.push((owned, base + end));
            });
            base += chunk.len();
        }
        let overflowed = parser.overflowed();
        (out, parser.finish(), overflowed)
    }

    fn run(chunks: &[&[u8]]) -> Run {
        run_with(chunks, 1 << 16)
    }

    fn events(chunks: &[&[u8]]) -> Vec<Ev> {
        run(chunks).0.into_iter().filter_map(|(e, _)| e).collect()
    }

    /// Whether each boundary dispatched, and its offset in the whole stream.
    fn boundaries(chunks: &[&[u8]]) -> Vec<(bool, usize)> {
        run(chunks).0.into_iter().map(|(e, end)| (e.is_some(), end)).collect()
    }

    fn ev(event: &str, data: &str) -> Ev {
        (event.to_owned(), data.as_bytes().to_vec())
    }

    /// Asserts that one chunk, every two-chunk split and one-byte chunks all give the same events.
    fn assert_split_invariant(stream: &[u8]) -> Vec<Ev> {
        let whole = events(&[stream]);
        for at in 0..=stream.len() {
            let (a, b) = stream.split_at(at);
            assert_eq!(events(&[a, b]), whole, "split at {at}");
        }
        assert_eq!(events(&stream.chunks(1).collect::<Vec<_>>()), whole);
        whole
    }

    #[test]
    fn lf_cr_and_crlf_all_end_lines() {
        let stream = b"data: a\r\rdata: b\n\ndata: c\r\n\r\ndata: d\r\ndata: e\n\r\n";
        let want = [ev("", "a"), ev("", "b"), ev("", "c"), ev("", "d\ne")];
        assert_eq!(assert_split_invariant(stream), want);
        let ends = [(true, 9), (true, 18), (true, 29), (true, 48)];
        assert_eq!(boundaries(&[stream]), ends);
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_break() {
        // The boundary is reported at the CR (offset 10); the LF opening the last chunk is skipped.
        assert_eq!(boundaries(&[b"data: a\r", b"\n\r", b"\n"]), [(true, 10)]);
        assert_eq!(boundaries(&[b"data: a\r\n\r\n"]), [(true, 11)]);
        let two = [ev("", "a"), ev("", "b")];
        assert_eq!(events(&[b"data: a\r\n\r", b"\ndata: b\n\n"]), two);
        // An empty chunk does not cancel the pending CR, and a CR followed by a CR is two breaks.
        assert_eq!(boundaries(&[b"data: a\r", b"", b"\n\n"]), [(true, 10)]);
        assert_eq!(boundaries(&[b"data: a\r", b"\r"]), [(true, 9)]);
    }

    #[test]
    fn comments_and_field_syntax() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b": keep-alive\n\n", None),
            (b":x\ndata: y\n: z\n\n", Some("y")),
            (b"data: a\n:\ndata: b\n\n", Some("a\nb")),
            (b"data:x\n\n", Some("x")),
            (b"data:  two\n\n", Some(" two")),
            (b"data: a:b\n\n", Some("a:b")),
            (b"data\n\n", Some("")),
            (b"data:\n\n", Some("")),
            (b"data\ndata\n\n", Some("\n")),
            (b"data: a\ndata:b\n\n", Some("a\nb")),
            (b"DATA: x\n\n", None),
            (b"data : x\n\n", None),
            (b"foo: bar\n\n", None),
            (b"event: ping\n\n", None),
        ];
        for &(stream, want) in cases {
            let want = vec![(want.map(|data| ev("", data)), stream.len())];
            assert_eq!(run(&[stream]).0, want, "{:?}", String::from_utf8_lossy(stream));
        }
    }

    #[test]
    fn event_names() {
        assert_eq!(events(&[b"event: delta\ndata: 1\n\n"]), [ev("delta", "1")]);
        assert_eq!(events(&[b"event: a\nevent: b\ndata: 1\n\n"]), [ev("b", "1")]);
        assert_eq!(events(&[b"event\ndata: 1\n\n"]), [ev("", "1")]);
        assert_eq!(events(&[b"event: \xff\ndata: 1\n\n"]), [ev("", "1")]);
        // The type is reset at every boundary, including one that dispatches nothing.
        let stream = b"event: x\n\ndata: 1\n\nevent: y\ndata: 2\n\ndata: 3\n\n";
        assert_eq!(events(&[stream]), [ev("", "1"), ev("y", "2"), ev("", "3")]);
    }

    #[test]
    fn id_and_retry_are_parsed() {
        let mut parser = SseParser::new(64);
        let state = |p: &SseParser| (p.last_event_id().to_vec(), p.retry_ms());
        parser.feed(b"id: 7\nretry: 1500\ndata: x\n\n", &mut |_, _| {});
        assert_eq!(state(&parser), (b"7".to_vec(), Some(1500)));
        let invalid = b"id: a\0b\nretry: 15x\nretry\nretry: 99999999999999999999\n\n";
        parser.feed(invalid, &mut |_, _| {});
        assert_eq!(state(&parser), (b"7".to_vec(), Some(1500)));
        parser.feed(b"id\n\n", &mut |_, _| {});
        assert_eq!(state(&parser), (Vec::new(), Some(1500)));
    }

    #[test]
    fn bom_is_stripped_once_even_when_split() {
        let want = [ev("", "a")];
        assert_eq!(assert_split_invariant(b"\xEF\xBB\xBFdata: a\n\n"), want);
        assert_eq!(events(&[b"\xEF", b"\xBB", b"\xBFdata: a\n\n"]), want);
        // A second BOM, or a BOM prefix that is not a BOM, is part of the first field name.
        assert_eq!(boundaries(&[b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\n"]), [(false, 15)]);
        assert_eq!(boundaries(&[b"\xEF", b"\xBBdata: a\n\n"]), [(false, 11)]);
        assert_eq!(assert_split_invariant(b"\xEF\n\ndata: a\n\n"), want);
        assert_eq!(boundaries(&[b"\xEF\xBB\xBF\n", b"\n"]), [(false, 4), (false, 5)]);
    }

    #[test]
    fn unterminated_final_event_is_discarded_and_reported() {
        let one = (vec![(Some(ev("", "a")), 9)], true, false);
        assert_eq!(run(&[b"data: a\n\ndata: b\n"]), one);
        let cases: &[(&[&[u8]], bool)] = &[
            (&[b"data: a\n\ndata: b"], true),
            (&[b"data: a\n\n: ping\n"], true),
            (&[b"data: a\n\n"], false),
            (&[b"data: a\r\n\r", b"\n"], false),
            (&[b"\xEF\xBB"], true),
            (&[b"\xEF\xBB\xBF", b""], false),
            (&[], false),
        ];
        for &(chunks, truncated) in cases {
            assert_eq!(run(chunks).1, truncated, "{chunks:?}");
        }
        let mut parser = SseParser::new(64);
        parser.feed(b"data: b", &mut |_, _| panic!("no boundary yet"));
        assert!(parser.finish());
        assert!(!parser.finish());
    }

    #[test]
    fn overflow_stops_callbacks_and_is_reported() {
        let stream = b"data: short\n\ndata: 0123456789abcdef0123\n\ndata: later\n\n";
        let want = (vec![(Some(ev("", "short")), 13)], true, true);
        assert_eq!(run_with(&[stream], 16), want);
        assert_eq!(run_with(&stream.chunks(1).collect::<Vec<_>>(), 16), want);
        // A line of exactly the cap is fine; the joined data of one event is capped too.
        let two_lines = b"data: 12345\ndata: 67890\n\n";
        assert_eq!(run_with(&[two_lines], 11), (vec![(Some(ev("", "12345\n67890")), 25)], false, false));
        assert_eq!(run_with(&[two_lines], 10), (vec![], true, true));
        let mut parser = SseParser::new(4);
        parser.feed(b"data: long", &mut |_, _| {});
        parser.feed(b"\n\n", &mut |_, _| panic!("no callbacks after an overflow"));
        assert!(parser.overflowed());
    }

    #[test]
    fn is_mid_event_transitions() {
        let mut parser = SseParser::new(64);
        let mut states = vec![parser.is_mid_event()];
        let chunks: [&[u8]; 8] = [b"dat", b"a: x\n", b"\n", b": c\n", b"\r", b"\n", b"data: y", b"\r\n\r\n"];
        for chunk in chunks {
            parser.feed(chunk, &mut |_, _| {});
            states.push(parser.is_mid_event());
        }
        assert_eq!(states, [false, true, true, false, true, false, false, true, false]);
    }

    #[test]
    fn boundary_offsets_cut_chunks_into_event_blocks() {
        let mixed = b"data: a\n\n: c\n\nevent: e\ndata: b\rdata: c\r\r\xEF\xBB\xBFdata: d\n\n";
        for stream in [CHAT, COMPLETIONS, &mixed[..]] {
            let ends: Vec<usize> = run(&[stream]).0.iter().map(|(_, end)| *end).collect();
            assert_eq!(ends.last(), Some(&stream.len()));
            let starts = std::iter::once(0).chain(ends.iter().copied());
            let want: Vec<&[u8]> = starts.zip(&ends).map(|(a, &b)| &stream[a..b]).collect();
            for size in [1, 2, 3, 7, 64, 200, stream.len()] {
                // Each block is built only from the pieces of chunks cut at the reported offsets.
                let (mut blocks, mut current) = (Vec::<Vec<u8>>::new(), Vec::new());
                let mut parser = SseParser::new(1 << 16);
                for chunk in stream.chunks(size) {
                    let mut start = 0;
                    parser.feed(chunk, &mut |_, end| {
                        current.extend_from_slice(&chunk[start..end]);
                        blocks.push(std::mem::take(&mut current));
                        start = end;
                    });
                    current.extend_from_slice(&chunk[start..]);
                }
                assert!(current.is_empty() && !parser.finish());
                assert_eq!(blocks, want, "chunk size {size}");
                assert_eq!(blocks.concat(), stream);
            }
        }
    }

    fn contains(data: &[u8], needle: &str) -> bool {
        data.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    #[test]
    fn chat_fixture_has_27_events_under_any_split() {
        let got = assert_split_invariant(CHAT);
        // 1 role chunk, 24 content chunks, 1 finish chunk, then the `[DONE]` sentinel.
        assert_eq!(got.len(), 27);
        assert!(got.iter().all(|(event, _)| event.is_empty()));
        assert!(contains(&got[0].1, "\"role\": \"assistant\""));
        assert!(got[1..25].iter().all(|(_, d)| contains(d, "\"content\": ")));
        assert!(contains(&got[25].1, "\"finish_reason\": \"length\""));
        assert_eq!(got[26].1, b"[DONE]");
    }

    #[test]
    fn completions_fixture_has_18_events_under_any_split() {
        let got = assert_split_invariant(COMPLETIONS);
        // 17 `text_completion` chunks, then the `[DONE]` sentinel.
        assert_eq!(got.len(), 18);
        assert!(got[..17].iter().all(|(_, d)| contains(d, "\"text_completion\"")));
        assert_eq!(got[17].1, b"[DONE]");
    }

    /// One line of an event stream, terminator included; a third of them are blank lines.
    fn line() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![b'a'..=b'e', Just(b' '), Just(b':'), 0x80u8..=0xFF];
        let text = proptest::collection::vec(byte, 0..10);
        const PREFIXES: &[&[u8]] = &[b"data: ", b"data:", b"data", b":", b"event: ", b"id: ", b""];
        const ENDS: &[&[u8]] = &[b"\n", b"\r", b"\r\n"];
        let end = prop::sample::select(ENDS);
        let field = (prop::sample::select(PREFIXES), text, end.clone());
        prop_oneof![2 => field.prop_map(|(p, t, e)| [p, &t, e].concat()), 1 => end.prop_map(<[u8]>::to_vec)]
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_boundaries(
            bom in any::<bool>(),
            lines in proptest::collection::vec(line(), 0..40),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
            max in prop_oneof![Just(1usize << 16), 4usize..40],
        ) {
            let stream = [if bom { &BOM[..] } else { b"" }, &lines.concat()].concat();
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            at.sort_unstable();
            let bounds = std::iter::once(0).chain(at.iter().copied());
            let ends = at.iter().copied().chain(std::iter::once(stream.len()));
            let chunks: Vec<&[u8]> = bounds.zip(ends).map(|(a, b)| &stream[a..b]).collect();
            let (whole, whole_finish, whole_over) = run_with(&[&stream], max);
            let (split, split_finish, split_over) = run_with(&chunks, max);
            prop_assert_eq!((whole_finish, whole_over), (split_finish, split_over));
            prop_assert_eq!(whole.len(), split.len());
            for ((want, w), (got, s)) in whole.iter().zip(&split) {
                prop_assert_eq!(want, got);
                // Offsets agree, except that a CRLF cut between its CR and LF ends at the CR.
                prop_assert!(w == s || (*w == s + 1 && stream[*s] == b'\n' && at.contains(s)));
            }
        }
    }
}
