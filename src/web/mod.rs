//! The pages creditd serves to people rather than programs: the sandbox checkout page and the
//! operators' dashboard (static files: [`dashboard`]). Their HTML lives beside this module as files embedded in the binary
//! (`include_str!`), with `{{name}}` placeholders that [`fill`] replaces by values the page's code
//! has already escaped. Nothing here reads or changes state: a page is rendered from a view the
//! caller hands over.

pub mod dashboard;
pub mod sandbox;

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Replaces every `{{name}}` in `template` by its value in `values`, in one pass: a value is
/// never searched for placeholders itself, so text a payer or tenant chose cannot inject one. A
/// placeholder without a value is a bug in the page's code, and stays as written.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out =
        String::with_capacity(template.len() + values.iter().map(|(_, v)| v.len()).sum::<usize>());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(length) = rest[start + 2..].find("}}") else {
            break;
        };
        let name = &rest[start + 2..start + 2 + length];
        out.push_str(&rest[..start]);
        match values.iter().find(|(key, _)| *key == name) {
            Some((_, value)) => out.push_str(value),
            None => {
                debug_assert!(false, "no value for the placeholder {name:?}");
                out.push_str(&rest[start..start + 4 + length]);
            }
        }
        rest = &rest[start + 4 + length..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn placeholders_are_filled_once_and_values_are_not_searched() {
        let filled = fill(
            "<b>{{a}}</b> {{b}}{{a}} {x}",
            &[("a", "{{b}}"), ("b", "two")],
        );
        assert_eq!(filled, "<b>{{b}}</b> two{{b}} {x}");
        assert_eq!(fill("no placeholder {{", &[]), "no placeholder {{");
    }
}
