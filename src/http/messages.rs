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
    /// An assistant's earlier calls.
    pub tool_calls: Option<Vec<InToolCall>>,
    /// The call a `tool` message answers.
    pub tool_call_id: Option<String>,
    /// A participant's name; the chat templates have no place for it, so it is ignored.
    #[expect(dead_code, reason = "read to check its type")]
    pub name: Option<String>,
    /// An assistant's earlier refusal, sent back in the history; ignored.
    #[expect(dead_code, reason = "read to check its type")]
    pub refusal: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct InToolCall {
    pub id: String,
    #[serde(rename = "type")]
    #[expect(dead_code, reason = "read to check its type")]
    pub kind: Option<String>,
    pub function: InFunctionCall,
}

#[derive(Debug, Deserialize)]
pub struct InFunctionCall {
    pub name: String,
    /// JSON text, as the model wrote it.
    pub arguments: String,
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
    let mut calls: Vec<&str> = Vec::new();
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let message = m.flatten(i)?;
        if message.role == "tool" {
            let id = message.tool_call_id.as_deref().unwrap_or_default();
            if !calls.contains(&id) {
                return Err(ApiError::invalid(
                    format!("no earlier assistant message made a tool call with id {id:?}"),
                    &format!("messages[{i}].tool_call_id"),
                ));
            }
        }
        calls.extend(m.tool_calls.iter().flatten().map(|c| c.id.as_str()));
        out.push(message);
    }
    Ok(out)
}

impl InMessage {
    fn flatten(&self, i: usize) -> Result<ChatMessage, ApiError> {
        let role = match self.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => "tool",
            "function" => {
                return Err(ApiError::unsupported(
                    &format!("messages[{i}].role"),
                    "the deprecated function role; use tool",
                ))
            }
            other => {
                return Err(ApiError::invalid(
                    format!("unknown role {other:?}"),
                    &format!("messages[{i}].role"),
                ))
            }
        };
        if role == "tool" && self.tool_call_id.is_none() {
            let param = format!("messages[{i}].tool_call_id");
            return Err(ApiError::invalid(
                format!("Missing required parameter: '{param}'."),
                &param,
            )
            .with_code("missing_required_parameter"));
        }
        let tool_calls = match (&self.tool_calls, role) {
            (Some(calls), "assistant") => calls.iter().map(InToolCall::for_template).collect(),
            (Some(calls), _) if !calls.is_empty() => {
                return Err(ApiError::invalid(
                    "only assistant messages hold tool calls",
                    &format!("messages[{i}].tool_calls"),
                ))
            }
            _ => Vec::new(),
        };
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
            tool_calls,
            tool_call_id: self.tool_call_id.clone(),
        })
    }
}

impl InToolCall {
    /// The call as chat templates read it: arguments as an object (they print it with
    /// `tojson`), kept as text if it is not JSON.
    fn for_template(&self) -> Value {
        let f = &self.function;
        let arguments = serde_json::from_str::<Value>(&f.arguments)
            .unwrap_or_else(|_| Value::String(f.arguments.clone()));
        serde_json::json!({
            "id": self.id,
            "type": "function",
            "function": {"name": f.name, "arguments": arguments},
        })
    }
}
