use super::*;

impl Sampler {
    /// The sampled token, for pipelines without a grammar (which cannot fail).
    fn pick(&mut self, logits: &[f32]) -> u32 {
        self.sample(logits).expect("no grammar").0
    }
}

fn params(temperature: f32, top_p: f32, top_k: usize, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        top_p,
        top_k,
        seed,
        ..SamplingParams::default()
    }
}

fn greedy() -> SamplingParams {
    params(0.0, 1.0, 0, 1)
}

#[test]
fn zero_temperature_is_argmax() {
    let mut s = Sampler::new(greedy(), &[]);
    assert_eq!(s.pick(&[0.1, 3.0, 2.9, -1.0]), 1);
}

#[test]
fn same_seed_gives_same_sequence() {
    let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
    let run = |seed| {
        let mut s = Sampler::new(params(1.0, 1.0, 0, seed), &[]);
        (0..20).map(|_| s.pick(&logits)).collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn choice_zero_keeps_the_request_seed_and_other_choices_differ() {
    let p = params(1.0, 1.0, 0, 42);
    assert_eq!(p.for_choice(0), p);
    assert_ne!(p.for_choice(1).seed, p.for_choice(2).seed);
}

#[test]
fn top_k_restricts_to_the_k_most_likely() {
    let logits = [5.0, 4.9, 0.0, 0.1, 4.8];
    let mut s = Sampler::new(params(5.0, 1.0, 2, 3), &[]);
    for _ in 0..200 {
        assert!(matches!(s.pick(&logits), 0 | 1));
    }
}

#[test]
fn top_p_keeps_the_smallest_set_reaching_the_mass() {
    // Probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.8 keeps the first two.
    let logits = [2.0, 1.0, 0.0, -1.0];
    let mut s = Sampler::new(params(1.0, 0.8, 0, 11), &[]);
    let mut seen = [0usize; 4];
    for _ in 0..500 {
        seen[s.pick(&logits) as usize] += 1;
    }
    assert_eq!(seen[2] + seen[3], 0);
    assert!(seen[0] > seen[1] && seen[1] > 0);
}

#[test]
fn min_p_drops_tokens_below_the_fraction_of_the_best() {
    // p ~ [0.64, 0.24, 0.09, 0.03]: min_p 0.2 keeps tokens with p >= 0.128.
    let logits = [2.0, 1.0, 0.0, -1.0];
    let mut s = Sampler::new(
        SamplingParams {
            min_p: 0.2,
            ..params(1.0, 1.0, 0, 4)
        },
        &[],
    );
    let mut seen = [0usize; 4];
    for _ in 0..500 {
        seen[s.pick(&logits) as usize] += 1;
    }
    assert_eq!(seen[2] + seen[3], 0, "{seen:?}");
    assert!(seen[1] > 0);
}

#[test]
fn sampling_follows_the_distribution() {
    // p = [0.5, 0.5] at temperature 1: both appear in roughly equal shares.
    let mut s = Sampler::new(params(1.0, 1.0, 0, 5), &[]);
    let ones = (0..2000).filter(|_| s.pick(&[0.0, 0.0]) == 1).count();
    assert!((800..1200).contains(&ones), "{ones}");
}

#[test]
fn negative_bias_bans_the_best_token_and_positive_bias_forces_another() {
    let logits = [1.0, 5.0, 2.0];
    let banned = SamplingParams {
        logit_bias: Arc::new([(1, -100.0)]),
        ..greedy()
    };
    assert_eq!(Sampler::new(banned, &[]).pick(&logits), 2);
    let forced = SamplingParams {
        logit_bias: Arc::new([(0, 100.0)]),
        ..params(1.0, 1.0, 0, 9)
    };
    let mut s = Sampler::new(forced, &[]);
    assert!((0..100).all(|_| s.pick(&logits) == 0));
}

#[test]
fn frequency_penalty_grows_with_each_repeat() {
    // Token 0 leads by 1.5; each sampling of it costs 1.0, so after two it loses.
    let logits = [2.5, 1.0];
    let mut s = Sampler::new(
        SamplingParams {
            frequency_penalty: 1.0,
            ..greedy()
        },
        &[],
    );
    let picks: Vec<u32> = (0..3).map(|_| s.pick(&logits)).collect();
    assert_eq!(picks, [0, 0, 1]);
}

#[test]
fn presence_penalty_counts_a_token_once() {
    // Token 0 leads by 1.5; presence 1.0 lowers it once, however often it appears.
    let logits = [2.5, 1.0];
    let mut s = Sampler::new(
        SamplingParams {
            presence_penalty: 1.0,
            ..greedy()
        },
        &[],
    );
    assert!((0..5).all(|_| s.pick(&logits) == 0));
    let mut stronger = Sampler::new(
        SamplingParams {
            presence_penalty: 2.0,
            ..greedy()
        },
        &[],
    );
    // 2.0 makes 0 lose after its first use, and 1 after its own: they alternate.
    let picks: Vec<u32> = (0..3).map(|_| stronger.pick(&logits)).collect();
    assert_eq!(picks, [0, 1, 0]);
}

#[test]
fn negative_presence_penalty_favours_repeats() {
    let logits = [1.0, 1.2];
    let mut s = Sampler::new(
        SamplingParams {
            presence_penalty: -1.0,
            logit_bias: Arc::new([(0, 0.5)]),
            ..greedy()
        },
        &[],
    );
    // First pick: 1.5 vs 1.2 -> 0; then 0 gains 1.0 more and stays.
    assert!((0..4).all(|_| s.pick(&logits) == 0));
}

#[test]
fn repetition_penalty_covers_prompt_tokens_and_both_signs() {
    // Token 0 is in the prompt: 3.0 / 2 = 1.5 < 2.0, so token 1 wins.
    let p = SamplingParams {
        repetition_penalty: 2.0,
        ..greedy()
    };
    assert_eq!(Sampler::new(p.clone(), &[0]).pick(&[3.0, 2.0]), 1);
    // A negative seen logit is multiplied: -1.0 * 2 = -2.0 < -1.5.
    assert_eq!(Sampler::new(p, &[0]).pick(&[-1.0, -1.5]), 1);
}

#[test]
fn raw_logits_are_left_untouched() {
    let logits = vec![1.0, 5.0, 2.0];
    let mut s = Sampler::new(
        SamplingParams {
            logit_bias: Arc::new([(1, -100.0)]),
            frequency_penalty: 1.0,
            ..greedy()
        },
        &[],
    );
    s.pick(&logits);
    assert_eq!(logits, [1.0, 5.0, 2.0]);
}
