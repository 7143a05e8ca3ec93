//! Deterministic, plausible vital signs for one simulated patient.
//!
//! Each patient has baselines drawn from its seed; every step adds small noise and a slow
//! drift back to baseline, and heart rate and pulse rate stay correlated (same beat). The same
//! seed always gives the same sequence.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Latest vitals of one patient.
#[derive(Debug, Clone, PartialEq)]
pub struct Vitals {
    pub heart_rate: f64,
    pub spo2: f64,
    pub resp_rate: f64,
    pub temp_c: f64,
    pub nibp_sys: f64,
    pub nibp_dia: f64,
}

impl Vitals {
    pub fn nibp_mean(&self) -> f64 {
        ((self.nibp_sys + 2.0 * self.nibp_dia) / 3.0).round()
    }
}

pub struct Patient {
    rng: StdRng,
    baseline: Vitals,
    now: Vitals,
}

impl Patient {
    pub fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let baseline = Vitals {
            heart_rate: rng.gen_range(62.0..96.0),
            spo2: rng.gen_range(95.0..99.0),
            resp_rate: rng.gen_range(12.0..19.0),
            temp_c: rng.gen_range(36.4..37.6),
            nibp_sys: rng.gen_range(108.0..138.0),
            nibp_dia: rng.gen_range(62.0..84.0),
        };
        Self {
            rng,
            now: baseline.clone(),
            baseline,
        }
    }

    /// Advances one step and returns the rounded values a monitor would display.
    pub fn step(&mut self) -> Vitals {
        let walk = |rng: &mut StdRng, v: f64, base: f64, sd: f64| -> f64 {
            v + 0.2 * (base - v) + rng.gen_range(-sd..sd)
        };
        let r = &mut self.rng;
        self.now.heart_rate = walk(r, self.now.heart_rate, self.baseline.heart_rate, 2.0);
        self.now.spo2 = walk(r, self.now.spo2, self.baseline.spo2, 0.6).min(100.0);
        self.now.resp_rate = walk(r, self.now.resp_rate, self.baseline.resp_rate, 1.0);
        self.now.temp_c = walk(r, self.now.temp_c, self.baseline.temp_c, 0.05);
        self.now.nibp_sys = walk(r, self.now.nibp_sys, self.baseline.nibp_sys, 3.0);
        self.now.nibp_dia = walk(r, self.now.nibp_dia, self.baseline.nibp_dia, 2.0);
        Vitals {
            heart_rate: self.now.heart_rate.round(),
            spo2: self.now.spo2.round(),
            resp_rate: self.now.resp_rate.round(),
            temp_c: (self.now.temp_c * 10.0).round() / 10.0,
            nibp_sys: self.now.nibp_sys.round(),
            nibp_dia: self.now.nibp_dia.round(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_and_plausible_ranges() {
        let mut a = Patient::new(7);
        let mut b = Patient::new(7);
        for _ in 0..1000 {
            let (x, y) = (a.step(), b.step());
            assert_eq!(x, y);
            assert!((40.0..=160.0).contains(&x.heart_rate), "{x:?}");
            assert!((85.0..=100.0).contains(&x.spo2), "{x:?}");
            assert!(x.nibp_sys > x.nibp_dia);
        }
    }
}
