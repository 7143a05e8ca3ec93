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

/// A clinical course applied to a patient from a given step on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Course {
    /// Sepsis-like: heart and respiratory rate rise, blood pressure falls, fever.
    Deterioration,
    /// SpO2 falls by about one point per step down to about 80 %.
    Desaturation,
    /// Breathing stops: respiratory rate 0, SpO2 falls.
    Apnea,
}

pub struct Patient {
    rng: StdRng,
    baseline: Vitals,
    now: Vitals,
    step: u64,
    course: Option<(Course, u64)>,
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
            step: 0,
            course: None,
        }
    }

    /// Starts `course` at step `from` (0 = the next step).
    pub fn set_course(&mut self, course: Course, from: u64) {
        self.course = Some((course, from));
    }

    /// The baseline the vitals drift back to, shifted by the course.
    fn target(&self) -> Vitals {
        let mut t = self.baseline.clone();
        if let Some((course, from)) = self.course {
            let k = self.step.saturating_sub(from) as f64;
            if self.step >= from {
                match course {
                    Course::Deterioration => {
                        t.heart_rate += (k * 1.0).min(45.0);
                        t.resp_rate += (k * 0.4).min(16.0);
                        t.nibp_sys -= (k * 1.0).min(45.0);
                        t.nibp_dia -= (k * 0.5).min(25.0);
                        t.temp_c += (k * 0.05).min(2.0);
                    }
                    Course::Desaturation => t.spo2 = (t.spo2 - k).max(80.0),
                    Course::Apnea => {
                        t.resp_rate = 0.0;
                        t.spo2 = (t.spo2 - k * 0.7).max(75.0);
                    }
                }
            }
        }
        t
    }

    /// Advances one step and returns the rounded values a monitor would display.
    pub fn step(&mut self) -> Vitals {
        let walk = |rng: &mut StdRng, v: f64, base: f64, sd: f64| -> f64 {
            v + 0.2 * (base - v) + rng.gen_range(-sd..sd)
        };
        let target = self.target();
        self.step += 1;
        let r = &mut self.rng;
        self.now.heart_rate = walk(r, self.now.heart_rate, target.heart_rate, 2.0);
        self.now.spo2 = walk(r, self.now.spo2, target.spo2, 0.6).min(100.0);
        self.now.resp_rate = walk(r, self.now.resp_rate, target.resp_rate, 1.0).max(0.0);
        if target.resp_rate == 0.0 {
            self.now.resp_rate = 0.0;
        }
        self.now.temp_c = walk(r, self.now.temp_c, target.temp_c, 0.05);
        self.now.nibp_sys = walk(r, self.now.nibp_sys, target.nibp_sys, 3.0);
        self.now.nibp_dia = walk(r, self.now.nibp_dia, target.nibp_dia, 2.0);
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
    fn courses_move_the_vitals_the_way_they_should() {
        let run = |course: Option<Course>| {
            let mut p = Patient::new(11);
            if let Some(c) = course {
                p.set_course(c, 10);
            }
            (0..80).map(|_| p.step()).last().unwrap()
        };
        let calm = run(None);
        let septic = run(Some(Course::Deterioration));
        assert!(
            septic.heart_rate > calm.heart_rate + 25.0,
            "{septic:?} vs {calm:?}"
        );
        assert!(septic.resp_rate > calm.resp_rate + 8.0);
        assert!(septic.nibp_sys < calm.nibp_sys - 25.0);
        let desat = run(Some(Course::Desaturation));
        assert!(desat.spo2 <= 84.0, "{desat:?}");
        let apnea = run(Some(Course::Apnea));
        assert_eq!(apnea.resp_rate, 0.0);
        assert!(apnea.spo2 < calm.spo2 - 10.0);
    }

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
