//! The pre-roll: the most recent audio while the gate is closed, in a ring allocated once,
//! so that the start of a word the detector only recognised a little later is still sent.

/// A fixed-capacity ring of the newest samples pushed into it.
#[derive(Debug, Clone)]
pub(crate) struct PreRoll {
    buf: Box<[i16]>,
    /// Index of the oldest sample.
    start: usize,
    len: usize,
}

impl PreRoll {
    /// A ring holding up to `capacity` samples (allocated here, never again).
    pub(crate) fn new(capacity: usize) -> PreRoll {
        PreRoll {
            buf: vec![0; capacity].into_boxed_slice(),
            start: 0,
            len: 0,
        }
    }

    /// Samples held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends `samples`, pushing out the oldest ones beyond the capacity; returns how many
    /// samples were pushed out (of those held before or of `samples` itself).
    pub(crate) fn push(&mut self, samples: &[i16]) -> usize {
        let cap = self.buf.len();
        if samples.len() >= cap {
            let lost = self.len + samples.len() - cap;
            self.buf.copy_from_slice(&samples[samples.len() - cap..]);
            self.start = 0;
            self.len = cap;
            return lost;
        }
        let lost = (self.len + samples.len()).saturating_sub(cap);
        // The oldest `lost` samples are overwritten: the ring starts after them.
        let end = (self.start + self.len) % cap.max(1);
        let first = samples.len().min(cap - end);
        self.buf[end..end + first].copy_from_slice(&samples[..first]);
        self.buf[..samples.len() - first].copy_from_slice(&samples[first..]);
        self.len = (self.len + samples.len()).min(cap);
        self.start = (self.start + lost) % cap.max(1);
        lost
    }

    /// The samples held, oldest first, as the two halves of the ring.
    pub(crate) fn as_slices(&self) -> (&[i16], &[i16]) {
        let cap = self.buf.len();
        if self.start + self.len <= cap {
            (&self.buf[self.start..self.start + self.len], &[])
        } else {
            let wrapped = self.start + self.len - cap;
            (&self.buf[self.start..], &self.buf[..wrapped])
        }
    }

    /// Copies into `out` the `out.len()` samples that end `before_newest` samples before the
    /// newest one held; returns false (copying nothing) if the ring does not hold them all.
    pub(crate) fn copy_back(&self, before_newest: usize, out: &mut [i16]) -> bool {
        let Some(from_oldest) = self.len.checked_sub(before_newest + out.len()) else {
            return false;
        };
        let cap = self.buf.len();
        for (k, o) in out.iter_mut().enumerate() {
            *o = self.buf[(self.start + from_oldest + k) % cap];
        }
        true
    }

    /// Forgets the samples held.
    pub(crate) fn clear(&mut self) {
        self.start = 0;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(r: &PreRoll) -> Vec<i16> {
        let (a, b) = r.as_slices();
        [a, b].concat()
    }

    #[test]
    fn keeps_the_newest_samples_in_order_whatever_the_push_sizes() {
        let input: Vec<i16> = (0..1000).collect();
        for size in [1usize, 3, 7, 10, 11, 64, 999, 1000] {
            let mut r = PreRoll::new(10);
            let mut lost = 0;
            for chunk in input.chunks(size) {
                lost += r.push(chunk);
            }
            assert_eq!(contents(&r), &input[990..], "push size {size}");
            assert_eq!(lost, 990, "push size {size}");
        }
    }

    #[test]
    fn partial_fill_and_clear() {
        let mut r = PreRoll::new(8);
        assert_eq!(r.push(&[1, 2, 3]), 0);
        assert_eq!(contents(&r), [1, 2, 3]);
        r.clear();
        assert_eq!(r.len(), 0);
        assert_eq!(r.push(&[4, 5, 6, 7, 8, 9, 10, 11, 12]), 1);
        assert_eq!(contents(&r), [5, 6, 7, 8, 9, 10, 11, 12]);
    }

    #[test]
    fn copies_back_from_the_newest_across_the_wrap() {
        let mut r = PreRoll::new(8);
        r.push(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        let mut out = [0i16; 3];
        assert!(r.copy_back(0, &mut out));
        assert_eq!(out, [9, 10, 11]);
        assert!(r.copy_back(2, &mut out));
        assert_eq!(out, [7, 8, 9]);
        assert!(r.copy_back(5, &mut out));
        assert_eq!(out, [4, 5, 6]);
        assert!(!r.copy_back(6, &mut out));
    }

    #[test]
    fn zero_capacity_holds_nothing() {
        let mut r = PreRoll::new(0);
        assert_eq!(r.push(&[1, 2]), 2);
        assert_eq!(r.len(), 0);
        assert_eq!(contents(&r), [0i16; 0]);
    }
}
