//! Chat prompts rendered with the model's own Jinja template (as Hugging Face does), so that a
//! conversation becomes exactly the tokens other engines feed the same model.

use super::{BackendError, Result};
use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

/// One message of a conversation, its content flattened to text.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant's earlier tool calls, as templates read them (Hugging Face's shape:
    /// `{"type": "function", "function": {"name", "arguments": <object>}}`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<serde_json::Value>,
    /// The call a `tool` message answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.to_string(),
            content: content.into(),
            ..ChatMessage::default()
        }
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    /// The template renders a `tools` list itself (Qwen2.5's does; SmolLM2's does not).
    supports_tools: bool,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are visible to the template as in HF.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        // HF renders chat templates with these two flags; without them whitespace differs.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Templates written for Python call str methods such as .strip() and .startswith().
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| BackendError::Tokenizer(format!("chat template does not compile: {e}")))?;
        Ok(ChatTemplate {
            env,
            supports_tools: source.contains("tools"),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    pub fn supports_tools(&self) -> bool {
        self.supports_tools
    }

    /// Renders the conversation; with `add_generation_prompt` the text ends where the
    /// assistant's reply begins. `tools` (OpenAI's function definitions) reach templates that
    /// render them; an empty list is passed as none, as Hugging Face does.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let generic;
        let messages = if self.supports_tools {
            messages
        } else {
            generic = generic_tools(messages, tools);
            &generic
        };
        let tools = (!tools.is_empty() && self.supports_tools).then_some(tools);
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| BackendError::Tokenizer(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                tools => tools,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| BackendError::Tokenizer(format!("chat template: {e}")))
    }
}

/// What a template without tool support is given instead: the tools described in the system
/// message, and earlier calls written out as text, in the format Qwen2.5 and Hermes models
/// use (`<tool_call>{"name": …, "arguments": …}</tool_call>`), which our tool grammar and
/// parser expect from every model.
fn generic_tools(messages: &[ChatMessage], tools: &[serde_json::Value]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = messages
        .iter()
        .map(|m| {
            let mut text = m.content.clone();
            for call in &m.tool_calls {
                // Spaced as the tool grammar writes calls, so the model sees its own format.
                let f = &call["function"];
                let (name, args) = (&f["name"], &f["arguments"]);
                text.push_str(&format!(
                    "\n<tool_call>\n{{\"name\": {name}, \"arguments\": {args}}}\n</tool_call>"
                ));
            }
            ChatMessage::new(&m.role, text.trim_start().to_string())
        })
        .collect();
    if tools.is_empty() {
        return out;
    }
    let mut prompt = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for tool in tools {
        prompt.push('\n');
        prompt.push_str(&tool.to_string());
    }
    prompt.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    match out.first_mut() {
        Some(first) if first.role == "system" => {
            first.content = format!("{}\n\n{prompt}", first.content);
        }
        _ => out.insert(0, ChatMessage::new("system", prompt)),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ChatML template SmolLM2-135M-Instruct ships in its GGUF metadata.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn user(text: &str) -> ChatMessage {
        ChatMessage::new("user", text)
    }

    #[test]
    fn chatml_inserts_the_default_system_message_and_generation_prompt() {
        let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").expect("compiles");
        let text = t.render(&[user("Hi")], &[], true).expect("renders");
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn a_template_without_tools_gets_them_in_its_system_message() {
        let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").expect("compiles");
        assert!(!t.supports_tools());
        let tool = serde_json::json!({"type": "function", "function": {"name": "get_time"}});
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = vec![serde_json::json!({
            "id": "c1", "type": "function",
            "function": {"name": "get_time", "arguments": {"tz": "UTC"}},
        })];
        let text = t
            .render(&[user("Time?"), call], &[tool], true)
            .expect("renders");
        assert!(text.starts_with("<|im_start|>system\n# Tools"), "{text}");
        assert!(
            text.contains(r#"{"type":"function","function":{"name":"get_time"}}"#),
            "{text}"
        );
        assert!(
            text.contains("<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\":\"UTC\"}}\n</tool_call><|im_end|>"),
            "{text}"
        );
    }

    #[test]
    fn python_string_methods_work_in_templates() {
        let src = "{% for m in messages %}{{ m.content.strip() | upper }}{% endfor %}";
        let t = ChatTemplate::new(src, "", "").expect("compiles");
        assert_eq!(
            t.render(&[user("  hi  ")], &[], false).expect("renders"),
            "HI"
        );
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let src = "{{ raise_exception('roles must alternate') }}";
        let t = ChatTemplate::new(src, "", "").expect("compiles");
        let err = t.render(&[user("x")], &[], true).unwrap_err().to_string();
        assert!(err.contains("roles must alternate"), "{err}");
    }
}
