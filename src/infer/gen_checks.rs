//! The checks a generation request passes before it is queued: choices and
//! log-probabilities within what the model serves, and the prompt and output within its
//! context. Nothing that fails them reaches a replica.

use super::generate::GenerateModel;
use super::logprobs::MAX_TOP_LOGPROBS;
use super::{GenRequest, InferError};

impl GenerateModel {
    /// `n` and `top_logprobs` within what this model serves; nothing else reaches a replica.
    pub(super) fn check_choices(&self, req: &GenRequest) -> Result<(), InferError> {
        if req.n == 0 || req.n > self.max_n {
            return Err(InferError::invalid(
                format!(
                    "n is {}; this model serves 1 to {} choices per request",
                    req.n, self.max_n
                ),
                "n",
            ));
        }
        let vocab = self.tokenizer.get_vocab_size(true) as u32;
        if let Some((bad, _)) = req.sampling.logit_bias.iter().find(|(t, _)| *t >= vocab) {
            return Err(InferError::invalid(
                format!(
                    "logit_bias names token {bad}, which is not a token id of this model (0 to {})",
                    vocab - 1
                ),
                "logit_bias",
            ));
        }
        if req.logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
            return Err(InferError::invalid(
                format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}"),
                "top_logprobs",
            ));
        }
        Ok(())
    }

    /// Checks the prompt against the context and returns the output budget. `param` names
    /// the prompt's field in errors about its length.
    pub(super) fn check_lengths(
        &self,
        prompt: usize,
        param: &'static str,
        asked: Option<usize>,
    ) -> Result<usize, InferError> {
        let limits = &self.limits;
        if prompt == 0 {
            return Err(InferError::invalid("The prompt is empty", param));
        }
        let max_prompt = limits.max_prompt_tokens.min(self.context_length - 1);
        if prompt > max_prompt {
            return Err(InferError::ContextLength {
                message: format!(
                    "This model's maximum prompt length is {max_prompt} tokens. However, your prompt \
                     has {prompt} tokens. Please shorten it."
                ),
                param,
            });
        }
        let room = self.context_length - prompt;
        match asked {
            Some(0) => Err(InferError::invalid(
                "max_tokens must be at least 1",
                "max_tokens",
            )),
            Some(n) if n > room => Err(InferError::ContextLength {
                message: format!(
                    "This model's maximum context length is {} tokens. However, you requested {} \
                     tokens ({prompt} in the {param}, {n} in the completion). Please reduce the \
                     length of the {param} or completion.",
                    self.context_length,
                    prompt + n
                ),
                param: "max_tokens",
            }),
            Some(n) if n > limits.max_output_tokens => Err(InferError::invalid(
                format!(
                    "max_tokens is {n}, above this server's limit of {}",
                    limits.max_output_tokens
                ),
                "max_tokens",
            )),
            Some(n) => Ok(n),
            None => Ok(limits.default_max_tokens.min(room)),
        }
    }
}
