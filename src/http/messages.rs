//! The conversation of a chat request as the API sends it, and its flattening into the
//! plain-text messages the chat templates take.

use crate::backend::chat_template::ChatMessage;
use crate::error::ApiError;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
pub struct InMessage {
    pub role: String,
    pub content: Option<Content>,
    /// Only an empty list is served (no tool calling yet).
    pub tool_calls: Option<Vec<Value>>,
    /// A participant's name; the chat templates have no place for it, so it is ignored.
    #[expect(dead_code, reason = "read to check its type")]
    pub name: Option<String>,
    /// An assistant's earlier refusal, sent back in the history; ignored.
    #[expect(dead_code, reason = "read to check its type")]
    pub refusal: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or an array of content parts")]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// The conversation as plain-text messages for the chat template.
pub fn chat_messages(messages: &[InMessage]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "`messages` must not be empty",
            "messages",
        ));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| m.flatten(i))
        .collect()
}

impl InMessage {
    fn flatten(&self, i: usize) -> Result<ChatMessage, ApiError> {
        let role = match self.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" | "function" => {
                return Err(ApiError::unsupported(
                    &format!("messages[{i}].role"),
                    "no tool messages",
                ))
            }
            other => {
                return Err(ApiError::invalid(
                    format!("unknown role {other:?}"),
                    &format!("messages[{i}].role"),
                ))
            }
        };
        if self
            .tool_calls
            .as_ref()
            .is_some_and(|calls| !calls.is_empty())
        {
            return Err(ApiError::unsupported(
                &format!("messages[{i}].tool_calls"),
                "no tool calling",
            ));
        }
        let content = match &self.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for (j, part) in parts.iter().enumerate() {
                    match (part.kind.as_str(), &part.text) {
                        ("text", Some(t)) => text.push_str(t),
                        _ => {
                            let param = format!("messages[{i}].content[{j}]");
                            return Err(ApiError::unsupported(
                                &param,
                                "only text parts are served",
                            ));
                        }
                    }
                }
                text
            }
        };
        Ok(ChatMessage {
            role: role.to_string(),
            content,
        })
    }
}
