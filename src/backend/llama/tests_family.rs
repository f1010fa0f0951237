//! Every family of `family::FAMILIES` on a tiny random GGUF of its architecture, against
//! candle-transformers' own forward for that architecture. Adding a family is a row in
//! `FAMILIES`, its reference in `tests_gguf::reference_for`, and nothing else here: this test
//! walks the table. It runs in moments and needs no download.

use super::family::FAMILIES;
use super::tests_gguf::{candle_greedy, greedy_alone, max_diff, reference_for};
use super::tests_int8::{load, TinyGguf};
use super::*;

const PROMPTS: [&[u32]; 2] = [&[1, 5, 9, 42, 7, 3], &[99, 0, 64, 12]];

/// Our candle-op forward on candle's own Q8_0 matmul: the same kernels as the reference, so
/// only attention's summation order differs (measured max diff printed on failure).
#[test]
fn each_family_follows_candles_own_forward_greedily() {
    for fam in FAMILIES {
        let tiny = TinyGguf::of_family(fam.arch, "family", GgmlDType::Q8_0);
        let mut reference = reference_for(&tiny.0, &Device::Cpu);
        let mut ours = load(&tiny, None);
        for (slot, prompt) in PROMPTS.iter().enumerate() {
            let (want_tokens, want) = candle_greedy(reference.as_mut(), &Device::Cpu, prompt, 8);
            let (tokens, got) = greedy_alone(&mut ours, slot, prompt, 8);
            for (step, (g, w)) in got.iter().zip(&want).enumerate() {
                let diff = max_diff(g, w);
                assert!(
                    diff < 1e-4,
                    "{} prompt {slot} step {step}: {diff}",
                    fam.arch
                );
            }
            assert_eq!(tokens, want_tokens, "{} prompt {slot}", fam.arch);
        }
    }
}

/// The plain-Rust forward on our int8 kernel against the same reference: activations are
/// quantized alike and each block's integers summed exactly, so only f32 summation order
/// across blocks and in attention differs.
#[test]
fn each_family_on_the_plain_cpu_forward_follows_candles_own_forward() {
    for fam in FAMILIES {
        let tiny = TinyGguf::of_family(fam.arch, "plain", GgmlDType::Q8_0);
        let mut reference = reference_for(&tiny.0, &Device::Cpu);
        let mut ours = load(&tiny, Some(Isa::best()));
        assert!(ours.cpu.is_some(), "{}: runs the plain forward", fam.arch);
        for (slot, prompt) in PROMPTS.iter().enumerate() {
            let (_, want) = candle_greedy(reference.as_mut(), &Device::Cpu, prompt, 1);
            let got = ours.prefill(slot, prompt).expect("prefill");
            let diff = max_diff(&got, &want[0]);
            assert!(diff < 1e-3, "{} prompt {slot}: {diff}", fam.arch);
        }
    }
}

/// A GGUF of a family we do not serve stops the load, naming it; nothing is half-loaded.
#[test]
fn an_unserved_architecture_stops_the_load_naming_it() {
    use candle_core::quantized::gguf_file::Value;
    use candle_core::quantized::QTensor;
    let path = std::env::temp_dir().join(format!("tiergate-gemma-{}.gguf", std::process::id()));
    let embd = QTensor::quantize(
        &candle_core::Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).expect("t"),
        GgmlDType::F32,
    )
    .expect("tensor");
    let arch = Value::String("gemma3".into());
    let mut file = std::fs::File::create(&path).expect("create");
    gguf_file::write(
        &mut file,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", &embd)],
    )
    .expect("write");
    let opts = LlamaOptions {
        max_slots: 1,
        max_seq_len: 8,
        cpu_weight_format: None,
    };
    let err = load_gguf(&path, &Device::Cpu, &opts)
        .err()
        .expect("refused")
        .to_string();
    let _ = std::fs::remove_file(&path);
    assert!(err.contains("`gemma3` is not supported"), "{err}");
}

/// n > 1 choices start from a copy of one prefilled slot: the copy continues exactly as the
/// source would, and what either appends later never reaches the other. Both forwards.
#[test]
fn a_copied_slot_continues_exactly_like_its_source() {
    let tiny = TinyGguf::of_family(FAMILIES[0].arch, "copy", GgmlDType::Q8_0);
    for int8 in [None, Some(Isa::best())] {
        let mut model = load(&tiny, int8);
        let prompt = PROMPTS[0];
        model.prefill(0, prompt).unwrap();
        model.copy_slot(0, 1).unwrap();
        // The copy diverges first; the source must not see it.
        // One row per step, so both sides run the same shapes and must agree bit for bit.
        let copy_rows = model.decode(&[(1, 7)]).unwrap();
        model.decode(&[(1, 8)]).unwrap();
        let source_rows = model.decode(&[(0, 7)]).unwrap();
        assert_eq!(copy_rows[0], source_rows[0], "int8 {int8:?}");
        let mut fresh = load(&tiny, int8);
        fresh.prefill(0, prompt).unwrap();
        let mut alone = fresh.decode(&[(0, 7)]).unwrap();
        alone.extend(fresh.decode(&[(0, 9)]).unwrap());
        let after = model.decode(&[(0, 9)]).unwrap();
        assert_eq!(
            after[0], alone[1],
            "int8 {int8:?}: the copy's tokens reached the source"
        );
        assert!(model.copy_slot(0, 5).is_err());
    }
}
