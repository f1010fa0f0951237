//! Structured outputs and tool calling as the request asks for them: `response_format`,
//! `tools`, `tool_choice` and `parallel_tool_calls`, checked (400 naming the field) and turned
//! into the one grammar the output must follow.
//!
//! Every model writes a call in the format Qwen2.5 and Hermes models were trained on:
//! `<tool_call>\n{"name": "<name>", "arguments": <arguments>}\n</tool_call>`, the arguments
//! held to the function's JSON schema by the grammar. With `tool_choice: "required"` (or a
//! named function) the output is one or more calls (one for a named function, or without
//! `parallel_tool_calls`); with `"auto"` it is either calls or an answer that never writes
//! `<tool_call>` (text, or the `response_format`'s JSON). `tool_calls.rs` reads it back.

use crate::error::ApiError;
use crate::infer::{with_layout, Constraint};
use serde::Deserialize;
use serde_json::{json, Value};

/// What opens and closes a call in the output (see the module doc).
pub const CALL_OPEN: &str = "<tool_call>";

/// The request fields this module reads.
#[derive(Debug, Default, Deserialize)]
pub struct ToolFields {
    pub tools: Option<Vec<ToolDef>>,
    pub tool_choice: Option<ToolChoiceField>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<ResponseFormat>,
    /// vLLM's extension for the grammars OpenAI's API has no field for.
    pub structured_outputs: Option<StructuredOutputs>,
}

#[derive(Debug, Deserialize)]
pub struct ToolDef {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: Option<FunctionDef>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Option<Value>,
    /// Calls are held to the schema whether or not it is strict.
    pub strict: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "\"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}"
)]
pub enum ToolChoiceField {
    Mode(String),
    Function { function: NamedFunction },
}

#[derive(Debug, Deserialize)]
pub struct NamedFunction {
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
    pub json_schema: Option<JsonSchemaFormat>,
}

#[derive(Debug, Deserialize)]
pub struct JsonSchemaFormat {
    pub name: String,
    pub schema: Option<Value>,
    /// The answer is held to the schema whether or not it is strict.
    #[expect(dead_code, reason = "read to check its type")]
    pub strict: Option<bool>,
    #[expect(dead_code, reason = "read to check its type")]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct StructuredOutputs {
    pub regex: Option<String>,
    /// llguidance's Lark dialect.
    pub grammar: Option<String>,
}

/// The checked tool set of a request that may call tools.
#[derive(Debug, Clone)]
pub struct Tools {
    /// OpenAI's definitions, as chat templates render them.
    pub defs: Vec<Value>,
    functions: Vec<(String, Value)>,
    choice: Choice,
    parallel: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Choice {
    Auto,
    Required,
    Named(usize),
}

/// What a request asks of its output: the grammar (and the field errors should name), and
/// the tools, when the output may hold calls.
#[derive(Debug, Default)]
pub struct OutputSpec {
    pub constraint: Option<(Constraint, &'static str)>,
    pub tools: Option<Tools>,
}

impl ToolFields {
    pub fn output_spec(&self) -> Result<OutputSpec, ApiError> {
        let text = self.text_constraint()?;
        let Some(tools) = self.tools()? else {
            return Ok(OutputSpec {
                constraint: text,
                tools: None,
            });
        };
        let text = match text {
            Some((_, "structured_outputs")) => {
                return Err(ApiError::invalid(
                    "`structured_outputs` cannot be combined with tools",
                    "structured_outputs",
                ))
            }
            Some((Constraint::JsonSchema(schema), _)) => Some(schema),
            Some((_, _)) => Some(json!({"type": "object"})),
            None => None,
        };
        let lark = tools.grammar(text.as_ref());
        Ok(OutputSpec {
            constraint: Some((Constraint::Lark(lark), "tools")),
            tools: Some(tools),
        })
    }

    /// `response_format` or `structured_outputs`, for an answer that is not a call.
    fn text_constraint(&self) -> Result<Option<(Constraint, &'static str)>, ApiError> {
        if let Some(so) = &self.structured_outputs {
            return match (&so.regex, &so.grammar) {
                (Some(rx), None) => Ok(Some((Constraint::Regex(rx.clone()), "structured_outputs"))),
                (None, Some(g)) => Ok(Some((Constraint::Lark(g.clone()), "structured_outputs"))),
                _ => Err(ApiError::invalid(
                    "`structured_outputs` takes exactly one of `regex` and `grammar`",
                    "structured_outputs",
                )),
            };
        }
        let Some(rf) = &self.response_format else {
            return Ok(None);
        };
        let param = "response_format.json_schema";
        match (rf.kind.as_str(), &rf.json_schema) {
            ("text", _) => Ok(None),
            ("json_object", _) => Ok(Some((Constraint::JsonObject, "response_format"))),
            ("json_schema", Some(js)) => {
                let schema = js.schema.clone().unwrap_or_else(|| json!({}));
                if !schema.is_object() && !schema.is_boolean() {
                    return Err(ApiError::invalid(
                        "`schema` must be a JSON schema (an object)",
                        "response_format.json_schema.schema",
                    ));
                }
                check_name(&js.name, &format!("{param}.name"))?;
                Ok(Some((
                    Constraint::JsonSchema(schema),
                    "response_format.json_schema.schema",
                )))
            }
            ("json_schema", None) => Err(ApiError::invalid(
                "`response_format` of type json_schema needs `json_schema`",
                param,
            )
            .with_code("missing_required_parameter")),
            (other, _) => Err(ApiError::invalid(
                format!("`response_format.type` must be text, json_object or json_schema, not {other:?}"),
                "response_format.type",
            )),
        }
    }

    /// The tools the output may call; None when it may call none.
    fn tools(&self) -> Result<Option<Tools>, ApiError> {
        let functions = self.functions()?;
        let choice = match &self.tool_choice {
            None => Choice::Auto,
            Some(ToolChoiceField::Mode(m)) => match m.as_str() {
                "none" => return Ok(None),
                "auto" => Choice::Auto,
                "required" => Choice::Required,
                other => {
                    let why = "must be none, auto, required or a function";
                    let message = format!("`tool_choice` {why}, not {other:?}");
                    return Err(ApiError::invalid(message, "tool_choice"));
                }
            },
            Some(ToolChoiceField::Function { function }) => {
                let name = &function.name;
                match functions.iter().position(|(n, _)| n == name) {
                    Some(i) => Choice::Named(i),
                    None => {
                        let message =
                            format!("`tool_choice` names {name:?}, which is not in `tools`");
                        return Err(ApiError::invalid(message, "tool_choice"));
                    }
                }
            }
        };
        if functions.is_empty() {
            if choice == Choice::Auto {
                return Ok(None);
            }
            return Err(ApiError::invalid(
                "`tool_choice` asks for a call but `tools` is empty",
                "tool_choice",
            ));
        }
        let defs = self.tools.iter().flatten().map(template_def).collect();
        Ok(Some(Tools {
            defs,
            functions,
            choice,
            parallel: self.parallel_tool_calls.unwrap_or(true),
        }))
    }

    /// Each function's name and parameter schema, checked.
    fn functions(&self) -> Result<Vec<(String, Value)>, ApiError> {
        let defs = self.tools.as_deref().unwrap_or_default();
        let mut functions: Vec<(String, Value)> = Vec::with_capacity(defs.len());
        for (i, def) in defs.iter().enumerate() {
            let f = match (def.kind.as_str(), &def.function) {
                ("function", Some(f)) => f,
                ("function", None) => {
                    let param = format!("tools[{i}].function");
                    let message = format!("Missing required parameter: '{param}'.");
                    return Err(
                        ApiError::invalid(message, &param).with_code("missing_required_parameter")
                    );
                }
                (other, _) => {
                    let message = format!("only tools of type function are served, not {other:?}");
                    return Err(ApiError::invalid(message, &format!("tools[{i}].type")));
                }
            };
            let param = format!("tools[{i}].function.name");
            check_name(&f.name, &param)?;
            if functions.iter().any(|(name, _)| *name == f.name) {
                let message = format!("two tools are named {:?}; names must be unique", f.name);
                return Err(ApiError::invalid(message, &param));
            }
            let params = f
                .parameters
                .clone()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            if !params.is_object() {
                return Err(ApiError::invalid(
                    "`parameters` must be a JSON schema (an object)",
                    &format!("tools[{i}].function.parameters"),
                ));
            }
            functions.push((f.name.clone(), params));
        }
        Ok(functions)
    }
}

/// A tool as chat templates print it (`tojson`): OpenAI's shape, unset fields left out.
fn template_def(def: &ToolDef) -> Value {
    let f = def.function.as_ref().expect("checked");
    let mut function = json!({"name": f.name});
    if let Some(d) = &f.description {
        function["description"] = json!(d);
    }
    if let Some(p) = &f.parameters {
        function["parameters"] = p.clone();
    }
    if let Some(s) = f.strict {
        function["strict"] = json!(s);
    }
    json!({"type": "function", "function": function})
}

/// OpenAI's rule for function and schema names; it also keeps them literal in a grammar.
fn check_name(name: &str, param: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            format!("{name:?} must be 1 to 64 letters, digits, underscores or dashes"),
            param,
        ))
    }
}

impl Tools {
    /// The Lark grammar of the output (see the module doc); `text` is the schema an answer
    /// that is not a call must follow, if any.
    fn grammar(&self, text: Option<&Value>) -> String {
        let call = |(name, params): &(String, Value)| {
            let open = format!("{CALL_OPEN}\n{{\"name\": \"{name}\", \"arguments\": ");
            format!(
                "{} %json{} {}",
                lark_string(&open),
                with_layout(params.clone()),
                lark_string("}\n</tool_call>")
            )
        };
        let calls: Vec<String> = match self.choice {
            Choice::Named(i) => vec![call(&self.functions[i])],
            _ => self.functions.iter().map(call).collect(),
        };
        let many = self.parallel && !matches!(self.choice, Choice::Named(_));
        let mut lark = String::from("start: ");
        lark.push_str(match self.choice {
            Choice::Auto => "answer | calls\n",
            _ => "calls\n",
        });
        lark.push_str(if many {
            "calls: call (\"\\n\" call)*\n"
        } else {
            "calls: call\n"
        });
        lark.push_str(&format!("call: {}\n", calls.join("\n    | ")));
        if self.choice == Choice::Auto {
            match text {
                Some(schema) => {
                    lark.push_str(&format!("answer: %json{}\n", with_layout(schema.clone())))
                }
                // Any text that does not write the call marker.
                None => lark.push_str("answer: TEXT\nTEXT: /(?s:.*)/ & ~/(?s:.*<tool_call>.*)/\n"),
            }
        }
        lark
    }

    /// The answer may be text rather than calls.
    pub fn may_answer(&self) -> bool {
        self.choice == Choice::Auto
    }
}

/// `s` as a Lark string literal (JSON's quoting, which llguidance's Lark reads).
fn lark_string(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

#[cfg(test)]
#[path = "tools_tests.rs"]
mod tests;
