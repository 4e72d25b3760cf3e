//! What every virtio device model keeps alike: its device id and queue
//! sizes, the features it offers, the ones the driver accepted, and
//! whether the driver activated it. Each device holds one [`VirtioCommon`]
//! and hands it to [`crate::virtio::VirtioDevice`] through
//! `VirtioDevice::virtio`, whose feature and queue methods then need no
//! code in the device. For snapshots it saves and checks its part of a
//! device's state ([`CommonState`]).

use serde::{Deserialize, Serialize};

/// The part of a device's state that is the same for every virtio device.
#[derive(Clone, Debug)]
pub struct VirtioCommon {
    device_type: u32,
    queue_sizes: Vec<u16>,
    features: u64,
    acked_features: u64,
    activated: bool,
}

impl VirtioCommon {
    /// A device of type `device_type` (`VIRTIO_ID_*`) offering `features`,
    /// with one queue per entry of `queue_sizes` (its maximum size); not
    /// negotiated, not activated.
    pub fn new(device_type: u32, features: u64, queue_sizes: &[u16]) -> VirtioCommon {
        VirtioCommon {
            device_type,
            queue_sizes: queue_sizes.to_vec(),
            features,
            acked_features: 0,
            activated: false,
        }
    }

    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// Maximum size of each queue; the slice length is the number of queues.
    pub fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    pub fn queue_count(&self) -> usize {
        self.queue_sizes.len()
    }

    /// The features the device offers.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Records what the driver accepted; bits never offered are dropped, so
    /// a driver cannot switch on what the device does not implement.
    pub fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.features;
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether the driver accepted feature bit `bit` (`VIRTIO_*_F_*`).
    pub fn has_feature(&self, bit: u32) -> bool {
        bit < 64 && self.acked_features & (1 << bit) != 0
    }

    pub fn activate(&mut self) {
        self.activated = true;
    }

    /// Whether the driver has activated the device (and not reset it since).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// A driver reset: nothing negotiated, not activated.
    pub fn reset(&mut self) {
        self.acked_features = 0;
        self.activated = false;
    }

    /// Whether no driver has set the device up yet (nothing acked, not
    /// activated): what a snapshot restore needs.
    pub fn is_fresh(&self) -> bool {
        self.acked_features == 0 && !self.activated
    }

    /// This part of the device's state, for a snapshot.
    pub fn save(&self) -> CommonState {
        CommonState {
            features: self.features,
            acked_features: self.acked_features,
            activated: self.activated,
        }
    }

    /// Why `saved` cannot be restored into this device, if it cannot: it
    /// offered other features (another build or configuration), or its
    /// driver acked some never offered (a damaged or forged state).
    pub fn check(&self, saved: &CommonState) -> Result<(), String> {
        if saved.features != self.features {
            return Err(format!(
                "the saved device offered features {:#x}, this one offers {:#x}",
                saved.features, self.features
            ));
        }
        if saved.acked_features & !saved.features != 0 {
            return Err(format!(
                "the acked features {:#x} include some never offered ({:#x})",
                saved.acked_features, saved.features
            ));
        }
        Ok(())
    }

    /// Takes `saved`, which [`VirtioCommon::check`] accepted, instead of
    /// the driver's negotiation and activation.
    pub fn restore(&mut self, saved: &CommonState) {
        self.acked_features = saved.acked_features & self.features;
        self.activated = saved.activated;
    }
}

/// What [`VirtioCommon`] saves: the offered features (which the restoring
/// device must offer too), the acked ones, and the activation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommonState {
    pub features: u64,
    pub acked_features: u64,
    pub activated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unoffered_features_are_never_acked_and_a_reset_forgets_all() {
        let mut v = VirtioCommon::new(2, 0b1010 | (1 << 32), &[16, 8]);
        assert_eq!(v.device_type(), 2);
        assert_eq!(v.queue_max_sizes(), &[16, 8]);
        assert_eq!(v.queue_count(), 2);
        assert!(v.is_fresh());
        v.ack_features(u64::MAX);
        assert_eq!(v.acked_features(), 0b1010 | (1 << 32));
        assert!(v.has_feature(32) && v.has_feature(3) && !v.has_feature(0));
        assert!(!v.has_feature(64), "no bit 64 to have");
        v.activate();
        assert!(v.is_activated() && !v.is_fresh());
        v.reset();
        assert_eq!(v.acked_features(), 0);
        assert!(!v.is_activated() && v.is_fresh());
    }

    #[test]
    fn a_saved_state_restores_only_into_a_device_offering_the_same() {
        let mut saved = VirtioCommon::new(19, 0b111, &[4]);
        saved.ack_features(0b101);
        saved.activate();
        let state = saved.save();

        let mut fresh = VirtioCommon::new(19, 0b111, &[4]);
        fresh.check(&state).expect("same device");
        fresh.restore(&state);
        assert_eq!(fresh.save(), state);
        assert!(fresh.is_activated());

        let other = VirtioCommon::new(19, 0b011, &[4]);
        let why = other.check(&state).expect_err("other features");
        assert!(
            why.contains("offered features 0x7, this one offers 0x3"),
            "{why}"
        );
        let forged = CommonState {
            acked_features: 0b1000,
            ..state
        };
        let why = fresh.check(&forged).expect_err("never offered");
        assert!(
            why.contains("acked features 0x8 include some never offered"),
            "{why}"
        );
    }
}
