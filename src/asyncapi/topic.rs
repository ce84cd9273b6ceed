//! Channel addresses as Kafka topic matchers.
//!
//! An address is either a plain topic name or a template with `{parameter}`s, such as
//! `user.{userId}.signedup`. A parameter matches one or more characters other than `.` (one segment
//! of a dotted topic name), or exactly one of its `enum` values when the document lists them.

use regex::Regex;

/// What a channel's address matches.
#[derive(Debug, Clone)]
pub enum TopicMatcher {
    Exact(String),
    Pattern { template: String, regex: Regex, literal_len: usize },
}

impl TopicMatcher {
    /// Builds the matcher for `address`; `enum_of(param)` gives a parameter's allowed values.
    pub fn new(address: &str, enum_of: impl Fn(&str) -> Option<Vec<String>>) -> Result<Self, String> {
        if !address.contains('{') {
            return Ok(Self::Exact(address.to_owned()));
        }
        let mut re = String::from("^");
        let mut literal_len = 0;
        let mut rest = address;
        while let Some(open) = rest.find('{') {
            let (lit, tail) = rest.split_at(open);
            re.push_str(&regex::escape(lit));
            literal_len += lit.len();
            let close = tail.find('}').ok_or_else(|| format!("unclosed parameter in address `{address}`"))?;
            let name = &tail[1..close];
            if name.is_empty() {
                return Err(format!("empty parameter name in address `{address}`"));
            }
            match enum_of(name) {
                Some(values) if !values.is_empty() => {
                    let alts: Vec<String> = values.iter().map(|v| regex::escape(v)).collect();
                    re.push_str(&format!("(?:{})", alts.join("|")));
                }
                _ => re.push_str("[^.]+"),
            }
            rest = &tail[close + 1..];
        }
        re.push_str(&regex::escape(rest));
        literal_len += rest.len();
        re.push('$');
        let regex = Regex::new(&re).map_err(|e| format!("address `{address}`: {e}"))?;
        Ok(Self::Pattern { template: address.to_owned(), regex, literal_len })
    }

    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Exact(t) => t == topic,
            Self::Pattern { regex, .. } => regex.is_match(topic),
        }
    }

    /// The address as written (the claim two documents must not share).
    pub fn address(&self) -> &str {
        match self {
            Self::Exact(t) => t,
            Self::Pattern { template, .. } => template,
        }
    }

    /// The address with parameter names erased, so `a.{x}` and `a.{y}` are recognised as one claim.
    pub fn claim_key(&self) -> String {
        match self {
            Self::Exact(t) => t.clone(),
            Self::Pattern { template, .. } => {
                let mut out = String::new();
                let mut in_param = false;
                for c in template.chars() {
                    match c {
                        '{' => {
                            in_param = true;
                            out.push_str("{}");
                        }
                        '}' => in_param = false,
                        c if !in_param => out.push(c),
                        _ => {}
                    }
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_match_one_segment_or_their_enum() {
        let m = TopicMatcher::new("user.{id}.signedup", |_| None).unwrap();
        assert!(m.matches("user.42.signedup"));
        assert!(!m.matches("user.4.2.signedup"));
        assert!(!m.matches("user..signedup"));
        assert!(!m.matches("xuser.42.signedup"));
        let m =
            TopicMatcher::new("events.{region}", |p| (p == "region").then(|| vec!["eu".into(), "us".into()])).unwrap();
        assert!(m.matches("events.eu") && !m.matches("events.asia"));
        assert_eq!(TopicMatcher::new("a.{x}.b", |_| None).unwrap().claim_key(), "a.{}.b");
        assert!(TopicMatcher::new("a.{x", |_| None).is_err());
        assert!(TopicMatcher::new("a+b.c", |_| None).unwrap().matches("a+b.c"));
    }
}
