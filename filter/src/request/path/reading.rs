//! The readings of a request path: its exact text, and the texts a server
//! behind the proxy may route it by. Servers read paths loosely: Express
//! ignores letter case and a trailing slash, Starlette (through uvicorn)
//! decodes escapes, servlet containers strip `;` parameters, many resolve
//! `..` or merge `//`. A decision taken on the exact text alone can be
//! undone behind the proxy, so the filter takes it on every reading.
//!
//! A reading is the path after some of the `Rewrites` below, compared with
//! or without letter case; a trailing slash never counts (`Reading`). Which
//! rewrites change a path is found once (`rewrites`); a path none of them
//! changes, the common case, is read in place without allocating.
//!
//! Rewrites commute as long as at most one of them changes the segments
//! (and escapes are not decoded into dot segments). A path that needs two,
//! such as `/a/..;/b` (parameters, then dots) or `/a//../b` (slashes and
//! dots, which RFC 3986 and `merge_slashes` resolve differently), reads
//! differently depending on the order a server applies them in, so its
//! readings cannot be listed: it is `Tangled`, and not judged.

/// A set of rewrites, applied by `rewrite` in the order of `Rewrites::ALL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rewrites(u8);

impl Rewrites {
    /// `%XX` of an RFC 3986 unreserved character (letter, digit, `-._~`) decoded.
    pub const DECODE: Rewrites = Rewrites(1);
    /// `%2F` and `%5C` read as `/`.
    pub const ENCODED_SLASHES: Rewrites = Rewrites(2);
    /// `\` read as `/`.
    pub const BACKSLASHES: Rewrites = Rewrites(4);
    /// `;…` parameters stripped from each segment.
    pub const PARAMS: Rewrites = Rewrites(8);
    /// Repeated slashes merged.
    pub const SLASHES: Rewrites = Rewrites(16);
    /// `.` and `..` segments resolved (RFC 3986 §5.2.4).
    pub const DOTS: Rewrites = Rewrites(32);
    pub const ALL: [Rewrites; 6] = [
        Self::DECODE,
        Self::ENCODED_SLASHES,
        Self::BACKSLASHES,
        Self::PARAMS,
        Self::SLASHES,
        Self::DOTS,
    ];
    /// The rewrites that change the segments themselves.
    const STRUCTURAL: u8 = 2 | 4 | 8 | 16 | 32;

    pub fn contains(self, other: Rewrites) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Every subset of these rewrites, the empty one included.
    pub fn subsets(self) -> impl Iterator<Item = Rewrites> {
        let all = self.0;
        // Counts down through the subsets of `all`: `(s - 1) & all`.
        let mut next = Some(all);
        std::iter::from_fn(move || {
            let s = next?;
            next = s.checked_sub(1).map(|n| n & all);
            Some(Rewrites(s))
        })
    }
}

/// Why a path's readings cannot be listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unjudgeable {
    /// Not starting with `/`, or a `%` not followed by two hex digits:
    /// servers disagree on what it means.
    Malformed,
    /// More than one rewrite changes its segments (see the module doc).
    Tangled,
}

/// The rewrites that change `path` (the path alone, without query): the
/// readings to compare are those of its subsets.
pub fn rewrites(path: &[u8]) -> Result<Rewrites, Unjudgeable> {
    if path.first() != Some(&b'/') {
        return Err(Unjudgeable::Malformed);
    }
    if is_plain(path) {
        return Ok(Rewrites::default());
    }
    if !escapes_are_well_formed(path) {
        return Err(Unjudgeable::Malformed);
    }
    let mut found = Rewrites::default();
    let mut current = path.to_vec();
    // In order, each on what the ones before left: a rewrite only ever adds
    // work for those after it (decoding makes dots and slashes, stripping
    // parameters makes `..` and `//`), so this finds every rewrite that
    // changes any subset's reading.
    for r in Rewrites::ALL {
        let next = apply(r, &current);
        if next != current {
            found.0 |= r.0;
            current = next;
        }
    }
    let structural = (found.0 & Rewrites::STRUCTURAL).count_ones();
    if structural > 1 || found.contains(Rewrites(Rewrites::DECODE.0 | Rewrites::DOTS.0)) {
        return Err(Unjudgeable::Tangled);
    }
    Ok(found)
}

/// `path` after the rewrites in `with`.
pub fn rewrite(path: &[u8], with: Rewrites) -> Vec<u8> {
    let mut out = path.to_vec();
    for r in Rewrites::ALL {
        if with.contains(r) {
            out = apply(r, &out);
        }
    }
    out
}

/// No rewrite changes it: no escape, backslash, parameter, `//` or dot segment.
fn is_plain(path: &[u8]) -> bool {
    !path.iter().any(|b| matches!(b, b'%' | b'\\' | b';'))
        && !path.windows(2).any(|w| w == b"//")
        && !path.split(|&b| b == b'/').any(is_dot_segment)
}

fn is_dot_segment(segment: &[u8]) -> bool {
    segment == b"." || segment == b".."
}

fn escapes_are_well_formed(path: &[u8]) -> bool {
    path.iter()
        .enumerate()
        .filter(|(_, &b)| b == b'%')
        .all(|(i, _)| escaped(path.get(i + 1..i + 3)).is_some())
}

/// The byte `%XX` stands for, given the `XX`.
fn escaped(hex: Option<&[u8]>) -> Option<u8> {
    let digit = |b: u8| char::from(b).to_digit(16);
    match hex? {
        [h, l] => Some((digit(*h)? * 16 + digit(*l)?) as u8),
        _ => None,
    }
}

fn apply(r: Rewrites, path: &[u8]) -> Vec<u8> {
    match r {
        Rewrites::DECODE => decode(path, |b| {
            (b.is_ascii_alphanumeric() || b"-._~".contains(&b)).then_some(b)
        }),
        Rewrites::ENCODED_SLASHES => decode(path, |b| matches!(b, b'/' | b'\\').then_some(b'/')),
        Rewrites::BACKSLASHES => path.iter().map(|&b| if b == b'\\' { b'/' } else { b }).collect(),
        Rewrites::PARAMS => join(
            path.split(|&b| b == b'/')
                .map(|s| s.split(|&b| b == b';').next().unwrap_or(s)),
        ),
        Rewrites::SLASHES => merge_slashes(path),
        // DOTS, the last.
        _ => remove_dot_segments(path),
    }
}

/// Replaces each `%XX` whose byte `keep` maps to something with that.
fn decode(path: &[u8], keep: impl Fn(u8) -> Option<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        let decoded = (b == b'%')
            .then(|| escaped(path.get(i + 1..i + 3)))
            .flatten()
            .and_then(&keep);
        match decoded {
            Some(d) => {
                out.push(d);
                i += 3;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn merge_slashes(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for &b in path {
        if !(b == b'/' && out.last() == Some(&b'/')) {
            out.push(b);
        }
    }
    out
}

fn join<'a>(segments: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, s) in segments.enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(s);
    }
    out
}

/// RFC 3986 §5.2.4 on an absolute path, segment by segment: `.` goes, `..`
/// takes the segment before it along (never above the root), and either
/// one at the end leaves a trailing slash.
fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    let segments: Vec<&[u8]> = path.split(|&b| b == b'/').skip(1).collect();
    let mut out: Vec<&[u8]> = Vec::with_capacity(segments.len());
    let last = segments.len().saturating_sub(1);
    for (i, s) in segments.iter().enumerate() {
        if is_dot_segment(s) {
            if *s == b".." {
                out.pop();
            }
            if i == last {
                out.push(b"");
            }
        } else {
            out.push(s);
        }
    }
    let mut joined = vec![b'/'];
    joined.extend(join(out.into_iter()));
    joined
}

/// Compared with letter case, or without (`/MCP` as `/mcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    Exact,
    Folded,
}

/// One reading of a path: a text, and whether its case counts.
///
/// A trailing slash is no reading of its own: matching ignores it, so that
/// a path and its twin with or without one always get the same decision
/// (a prefix `/admin/` also covers `/admin`; the endpoint `/mcp` is also
/// `/mcp/`).
#[derive(Debug, Clone, Copy)]
pub struct Reading<'a> {
    text: &'a [u8],
    case: Case,
}

impl<'a> Reading<'a> {
    pub fn exact(text: &'a [u8]) -> Reading<'a> {
        Reading {
            text,
            case: Case::Exact,
        }
    }

    /// `text` with and without letter case.
    pub fn all(text: &'a [u8]) -> [Reading<'a>; 2] {
        [Case::Exact, Case::Folded].map(|case| Reading { text, case })
    }

    /// Whether this reading is under `prefix`: starts with it, or is it
    /// without its trailing slash.
    pub fn starts_with(&self, prefix: &str) -> bool {
        let prefix = prefix.as_bytes();
        self.text
            .get(..prefix.len())
            .is_some_and(|head| self.same(head, prefix))
            || without_trailing_slash(prefix).is_some_and(|p| self.same(self.text, p))
    }

    /// Whether this reading is `path`, with or without a trailing slash.
    pub fn is(&self, path: &str) -> bool {
        let path = path.as_bytes();
        self.same(self.text, path)
            || without_trailing_slash(path).is_some_and(|p| self.same(self.text, p))
            || without_trailing_slash(self.text).is_some_and(|t| self.same(t, path))
    }

    fn same(&self, a: &[u8], b: &[u8]) -> bool {
        match self.case {
            Case::Exact => a == b,
            Case::Folded => a.eq_ignore_ascii_case(b),
        }
    }
}

/// `path` without its trailing slash; never the root's.
fn without_trailing_slash(path: &[u8]) -> Option<&[u8]> {
    match path.split_last() {
        Some((b'/', rest)) if !rest.is_empty() => Some(rest),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
