use super::*;

fn fields(body: Value) -> Result<OutputSpec, ApiError> {
    crate::http::extract::read::<ToolFields>(&body)?.output_spec()
}

fn weather() -> Value {
    json!({"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
}

fn param(r: Result<OutputSpec, ApiError>) -> String {
    r.expect_err("refused").param.unwrap_or_default()
}

#[test]
fn no_tools_and_no_format_is_unconstrained() {
    let spec = fields(json!({})).unwrap();
    assert!(spec.constraint.is_none() && spec.tools.is_none());
}

#[test]
fn json_schema_format_becomes_a_schema_constraint() {
    let spec = fields(json!({"response_format": {"type": "json_schema",
        "json_schema": {"name": "person", "schema": {"type": "object"}}}}))
    .unwrap();
    assert_eq!(
        spec.constraint,
        Some((
            Constraint::JsonSchema(json!({"type": "object"})),
            "response_format.json_schema.schema"
        ))
    );
}

#[test]
fn an_unknown_format_type_names_the_field() {
    assert_eq!(
        param(fields(json!({"response_format": {"type": "xml"}}))),
        "response_format.type"
    );
}

#[test]
fn required_tools_give_a_grammar_of_calls_only() {
    let spec = fields(json!({"tools": [weather()], "tool_choice": "required"})).unwrap();
    let Some((Constraint::Lark(lark), "tools")) = spec.constraint else {
        panic!("{:?}", spec.constraint)
    };
    assert!(lark.starts_with("start: calls\n"), "{lark}");
    assert!(
        lark.contains(r#""<tool_call>\n{\"name\": \"get_weather\", \"arguments\": " %json{"#),
        "{lark}"
    );
    assert!(!spec.tools.unwrap().may_answer());
}

#[test]
fn auto_lets_the_model_answer_or_call() {
    let spec = fields(json!({"tools": [weather()]})).unwrap();
    let Some((Constraint::Lark(lark), _)) = spec.constraint else {
        panic!()
    };
    assert!(lark.starts_with("start: answer | calls\n"), "{lark}");
    assert!(spec.tools.unwrap().may_answer());
}

#[test]
fn tool_choice_none_offers_no_tools() {
    let spec = fields(json!({"tools": [weather()], "tool_choice": "none"})).unwrap();
    assert!(spec.tools.is_none() && spec.constraint.is_none());
}

#[test]
fn duplicate_tool_names_are_refused() {
    assert_eq!(
        param(fields(json!({"tools": [weather(), weather()]}))),
        "tools[1].function.name"
    );
}

#[test]
fn an_unknown_tool_choice_name_is_refused() {
    let body = json!({"tools": [weather()], "tool_choice": {"type": "function", "function": {"name": "nope"}}});
    assert_eq!(param(fields(body)), "tool_choice");
}

#[test]
fn a_tool_of_another_type_is_refused() {
    assert_eq!(
        param(fields(json!({"tools": [{"type": "web_search"}]}))),
        "tools[0].type"
    );
}

#[test]
fn a_named_function_allows_one_call_to_it() {
    let body = json!({"tools": [weather(), {"type": "function", "function": {"name": "other"}}],
        "tool_choice": {"type": "function", "function": {"name": "other"}}});
    let Some((Constraint::Lark(lark), _)) = fields(body).unwrap().constraint else {
        panic!()
    };
    assert!(
        lark.contains("calls: call\n") && !lark.contains("get_weather"),
        "{lark}"
    );
}
