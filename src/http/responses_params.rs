//! Where each message of the chat body that serves a `/v1/responses` request came from, so
//! that an error about a chat field (`messages[3].tool_calls[1].function.arguments`) names
//! the Responses field the client sent (`input[4].arguments`).

use crate::error::ApiError;

/// Where a chat message came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    Instructions,
    /// `input` given as one string.
    InputText,
    /// `input[j]`, a message of the same shape.
    Message(usize),
    /// `input[j]` for each tool call, consecutive `function_call` items.
    Calls(Vec<usize>),
    /// `input[j]`, a `function_call_output` item.
    CallOutput(usize),
}

/// The origin of each chat message, to turn a chat field's path into the Responses one.
#[derive(Debug, Default)]
pub struct ParamMap {
    messages: Vec<Origin>,
}

impl ParamMap {
    pub fn push(&mut self, origin: Origin) {
        self.messages.push(origin);
    }

    /// The origin of the last message, which consecutive tool calls extend.
    pub fn last_mut(&mut self) -> Option<&mut Origin> {
        self.messages.last_mut()
    }

    /// `error` naming the Responses field, in its `param` and in its message.
    pub fn rename(&self, mut error: ApiError) -> ApiError {
        if let Some(old) = error.param.take() {
            let new = self.param(&old);
            if new != old {
                error.message = replace_word(&error.message, &old, &new);
            }
            error.param = Some(new);
        }
        error
    }

    /// The Responses field of chat field `chat`.
    pub fn param(&self, chat: &str) -> String {
        if chat == "messages" {
            return "input".into();
        }
        if let Some(rest) = chat.strip_prefix("messages[") {
            return self.message_param(rest).unwrap_or_else(|| chat.into());
        }
        let (head, rest) = chat.split_at(chat.find(['.', '[']).unwrap_or(chat.len()));
        match head {
            "max_tokens" | "max_completion_tokens" => "max_output_tokens".into(),
            "stream_options" => "stream".into(),
            "response_format" => {
                let rest = rest.strip_prefix(".json_schema").unwrap_or(rest);
                format!("text.format{rest}")
            }
            "tools" | "tool_choice" => chat.replacen(".function", "", 1),
            _ => chat.into(),
        }
    }

    /// `rest` follows `messages[`: `2].content[0]`.
    fn message_param(&self, rest: &str) -> Option<String> {
        let (index, rest) = rest.split_once(']')?;
        let origin = self.messages.get(index.parse::<usize>().ok()?)?;
        Some(match origin {
            Origin::Instructions => "instructions".into(),
            Origin::InputText => "input".into(),
            Origin::Message(j) => format!("input[{j}]{rest}"),
            Origin::CallOutput(j) => {
                let field = match rest.split(['.', '[']).nth(1) {
                    Some("content") => rest.replacen(".content", ".output", 1),
                    Some("tool_call_id") => ".call_id".into(),
                    Some(_) => ".type".into(),
                    None => String::new(),
                };
                format!("input[{j}]{field}")
            }
            Origin::Calls(items) => {
                let call = rest
                    .strip_prefix(".tool_calls[")
                    .and_then(|r| r.split_once(']'));
                match call.and_then(|(k, r)| Some((items.get(k.parse::<usize>().ok()?)?, r))) {
                    Some((j, ".id")) => format!("input[{j}].call_id"),
                    Some((j, r)) => format!("input[{j}]{}", r.replacen(".function", "", 1)),
                    None => format!("input[{}]", items[0]),
                }
            }
        })
    }
}

/// `text` with each whole-word `old` (not inside a longer name) replaced by `new`.
pub fn replace_word(text: &str, old: &str, new: &str) -> String {
    let name_char = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(old) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + old.len()..].chars().next();
        let whole = !before.is_some_and(name_char) && !after.is_some_and(name_char);
        out.push_str(&rest[..at]);
        out.push_str(if whole { new } else { old });
        rest = &rest[at + old.len()..];
    }
    out.push_str(rest);
    out
}
