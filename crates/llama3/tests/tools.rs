//! Tool calls end to end on the default model, in each format: the prompt the template renders
//! with the tools, the constraint of a required call compiled by llguidance, sampled answers
//! parsed back into calls whose arguments satisfy the tool's schema.

use llama3::generate::{generate_text, FinishReason, GenerateOptions, Session};
use llama3::grammar::Grammar;
use llama3::loader::{load, LoadOptions, Loaded};
use llama3::sample::SamplingParams;
use llama3::tokenizer::Tokenizer;
use llama3::tools::{prepare_chat, ChatMessage, Tool, ToolChoice, ToolFormat, ToolRequest};
use serde_json::{json, Value};

const LLAMA32_TEMPLATE: &str = include_str!("data/llama3.2_chat_template.jinja");

/// A Hermes-style ChatML template with tools, written for this test after the shape Qwen2.5
/// and Hermes use: tools listed in the system turn, calls in `<tool_call>` blocks, results in
/// `<tool_response>` blocks.
const HERMES_TEMPLATE: &str = r#"{%- if tools %}<|im_start|>system
You may call functions. Signatures:
<tools>
{% for t in tools %}{{ t | tojson }}
{% endfor %}</tools>
For each call, return <tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% endif %}{%- for m in messages %}{%- if m.role == "tool" %}<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% elif m.tool_calls is defined %}<|im_start|>assistant
{% for c in m.tool_calls %}<tool_call>
{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% else %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif %}{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"#;

fn tools() -> Vec<Tool> {
    serde_json::from_value(json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time", "description": "Time in a zone",
            "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 30}},
                "required": ["zone"], "additionalProperties": false}}}
    ]))
    .unwrap()
}

/// The few schema rules these tools use, checked by hand.
fn valid(name: &str, args: &Value) -> bool {
    let o = match args.as_object() {
        Some(o) => o,
        None => return false,
    };
    let short = |k: &str| {
        o.get(k)
            .and_then(Value::as_str)
            .is_some_and(|s| s.chars().count() <= 30)
    };
    match name {
        "get_weather" => {
            o.len() == 2
                && short("city")
                && ["celsius", "fahrenheit"].contains(&o["unit"].as_str().unwrap_or(""))
        }
        "get_time" => o.len() == 1 && short("zone"),
        _ => false,
    }
}

fn answer(m: &Loaded, tok: &Tokenizer, choice: ToolChoice, seed: u64) -> llama3::tools::Reply {
    let msgs = [ChatMessage::new("user", "What is the weather in Paris?")];
    let req = ToolRequest::new(tools(), choice, true).unwrap();
    let plan = prepare_chat(tok, &msgs, Some(&req)).unwrap();
    let grammar = plan
        .constraint
        .as_ref()
        .map(|c| Grammar::new(tok, c).unwrap());
    let opts = GenerateOptions {
        max_tokens: 200,
        sampling: SamplingParams {
            temperature: 1.0,
            seed,
            ..SamplingParams::default()
        },
        end_ids: tok.end_ids().to_vec(),
        grammar,
        ..GenerateOptions::default()
    };
    let mut s = Session::new(&m.model, plan.prompt.len() + 200).unwrap();
    let out = generate_text(&m.model, Some(tok), &mut s, &plan.prompt, opts, &[], |_| {}).unwrap();
    assert_eq!(out.finish_reason, FinishReason::Stop, "{}", out.text);
    plan.parser.expect("tools give a parser").parse(&out.text)
}

#[test]
fn required_calls_validate_in_every_format() {
    let m = load(&llama3_testutil::default_model(), &LoadOptions::default()).unwrap();
    let generic = m.tokenizer.as_ref().unwrap();
    let with = |src: &str| {
        let mut t = load(&llama3_testutil::default_model(), &LoadOptions::default())
            .unwrap()
            .tokenizer
            .unwrap();
        t.set_chat_template(src).unwrap();
        t
    };
    let (llama32, hermes) = (with(LLAMA32_TEMPLATE), with(HERMES_TEMPLATE));
    let cases = [
        (generic, ToolFormat::Generic),
        (&llama32, ToolFormat::Llama3Json),
        (&hermes, ToolFormat::Hermes),
    ];
    for (tok, format) in cases {
        let src = tok.chat_template().unwrap().source();
        assert_eq!(ToolFormat::of_template(src), format);
        for seed in 1..=3 {
            let r = answer(&m, tok, ToolChoice::Required, seed);
            assert!(!r.tool_calls.is_empty(), "{format:?} seed {seed}: {r:?}");
            for c in &r.tool_calls {
                let args: Value = serde_json::from_str(&c.function.arguments).unwrap();
                assert!(valid(&c.function.name, &args), "{format:?}: {c:?}");
            }
        }
        let r = answer(&m, tok, ToolChoice::Function("get_time".into()), 4);
        assert_eq!(r.tool_calls.len(), 1, "{format:?}: {r:?}");
        assert_eq!(r.tool_calls[0].function.name, "get_time");
    }
}

/// Tools reach the template; earlier calls and results are rendered in its format.
#[test]
fn history_with_calls_renders_in_each_format() {
    let m = load(&llama3_testutil::default_model(), &LoadOptions::default()).unwrap();
    let mut tok = m.tokenizer.unwrap();
    let call: llama3::tools::ToolCall = serde_json::from_value(json!({"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}))
    .unwrap();
    let mut said = ChatMessage::new("assistant", "");
    said.tool_calls = vec![call];
    let mut result = ChatMessage::new("tool", "{\"temperature\": 18}");
    result.tool_call_id = Some("call_1".into());
    let msgs = [ChatMessage::new("user", "Weather in Paris?"), said, result];
    let req = ToolRequest::new(tools(), ToolChoice::Auto, true).unwrap();
    let text = |tok: &Tokenizer| {
        let plan = prepare_chat(tok, &msgs, Some(&req)).unwrap();
        tok.decode(&plan.prompt, false).unwrap()
    };
    let generic = text(&tok);
    assert!(
        generic.contains("get_time") && generic.contains("\"tool_response\""),
        "{generic}"
    );
    assert!(
        generic.contains("{\"tool_calls\":[{\"name\":\"get_weather\""),
        "{generic}"
    );
    tok.set_chat_template(HERMES_TEMPLATE).unwrap();
    let hermes = text(&tok);
    assert!(
        hermes.contains("<tools>") && hermes.contains("<tool_response>\n{\"temperature\": 18}"),
        "{hermes}"
    );
    assert!(
        hermes.contains("\"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}"),
        "{hermes}"
    );
    tok.set_chat_template(LLAMA32_TEMPLATE).unwrap();
    let llama = text(&tok);
    assert!(
        llama.contains("ipython") && llama.contains("\"parameters\": {\"city\": \"Paris\""),
        "{llama}"
    );
    // tool_choice none: no tools in the prompt, no parser.
    let none = ToolRequest::new(tools(), ToolChoice::None, true).unwrap();
    let plan = prepare_chat(&tok, &msgs[..1], Some(&none)).unwrap();
    assert!(plan.parser.is_none() && plan.constraint.is_none());
    assert!(!tok
        .decode(&plan.prompt, false)
        .unwrap()
        .contains("get_time"));
    // Bad requests.
    assert!(ToolRequest::new(tools(), ToolChoice::Function("nope".into()), true).is_err());
    assert!(ToolRequest::new(vec![], ToolChoice::Required, true).is_err());
    assert!(ToolChoice::from_json(&json!("sometimes")).is_err());
}
