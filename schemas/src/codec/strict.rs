//! `StrictReader`: the input of `apache_avro`'s generic decoder, made to
//! notice truncated bodies.

/// A reader that remembers whether the decoder ever asked for bytes past the
/// end. apache-avro reads a union, boolean or string cut off by the end of
/// the input as null instead of failing; this turns that into an error, so a
/// truncated body can never decode into an event with signals missing.
pub(super) struct StrictReader<'a> {
    pub(super) rest: &'a [u8],
    pub(super) eof: bool,
}

impl std::io::Read for StrictReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !buf.is_empty() && self.rest.is_empty() {
            self.eof = true;
        }
        self.rest.read(buf)
    }
}
