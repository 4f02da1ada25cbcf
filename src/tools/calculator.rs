//! `calculator`: evaluates an arithmetic expression with the `exmex` crate.

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Tool, ToolContext, ToolError, ToolOutput};

/// Arithmetic on f64: `+ - * / ^ %`, parentheses, functions such as `sqrt`,
/// `sin`, `ln`, `log10`, `abs`, and the constants `PI` and `E`.
pub struct Calculator;

/// Longest accepted expression, in bytes.
const MAX_EXPRESSION_BYTES: usize = 1000;

impl Tool for Calculator {
    fn name(&self) -> &str {
        "calculator"
    }

    fn description(&self) -> &str {
        "Evaluate an arithmetic expression and return the number. Supports + - * / ^ %, \
         parentheses, sqrt, abs, sin, cos, tan, ln, log10, log2, exp, PI and E."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "expression": {
                    "type": "string",
                    "description": "The expression, e.g. \"(3 + 4) * 2 ^ 10\"."
                }
            },
            "required": ["expression"],
            "additionalProperties": false
        })
    }

    fn call(&self, _ctx: ToolContext, arguments: Value) -> BoxFuture<'static, Result<ToolOutput, ToolError>> {
        let expression = arguments
            .get("expression")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        async move { evaluate(&expression).map(ToolOutput::from) }.boxed()
    }
}

/// Evaluates `expression`; integral results print without a fraction.
pub fn evaluate(expression: &str) -> Result<String, ToolError> {
    let text = expression.trim();
    if text.is_empty() {
        return Err(ToolError::InvalidArguments("the expression is empty".into()));
    }
    if text.len() > MAX_EXPRESSION_BYTES {
        return Err(ToolError::InvalidArguments(format!(
            "the expression is longer than {MAX_EXPRESSION_BYTES} bytes"
        )));
    }
    let value: f64 = exmex::eval_str(text).map_err(|e| {
        ToolError::InvalidArguments(format!(
            "cannot evaluate {text:?}: {e}. Use numbers, + - * / ^ %, parentheses and functions like sqrt(x)."
        ))
    })?;
    if !value.is_finite() {
        return Err(ToolError::Failed(format!(
            "{text:?} has no finite value (division by zero or overflow)"
        )));
    }
    if value.fract() == 0.0 && value.abs() < 1e15 {
        Ok(format!("{}", value as i64))
    } else {
        Ok(format!("{value}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluates_arithmetic() {
        assert_eq!(evaluate("12*7").as_deref(), Ok("84"));
        assert_eq!(evaluate("(3 + 4) * 2 ^ 10").as_deref(), Ok("7168"));
        assert_eq!(evaluate("1/4").as_deref(), Ok("0.25"));
        assert_eq!(evaluate("sqrt(16) + abs(-2)").as_deref(), Ok("6"));
        assert!(matches!(evaluate("1/0"), Err(ToolError::Failed(_))));
        assert!(matches!(evaluate("2 +"), Err(ToolError::InvalidArguments(_))));
        assert!(matches!(evaluate("x + 1"), Err(ToolError::InvalidArguments(_))));
        assert!(matches!(evaluate("  "), Err(ToolError::InvalidArguments(_))));
    }
}
