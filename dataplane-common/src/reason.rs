//! Verdicts and drop reasons, shared by the datapath (which counts them) and
//! the agent (which names them in metrics and logs). Values are stable: they
//! are stored in maps and exported as metric labels.

macro_rules! coded_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal => $label:literal,)* }) => {
        $(#[$meta])*
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)*
        }

        impl $name {
            /// Every value, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            pub const fn from_code(code: u8) -> Option<Self> {
                match code {
                    $($value => Some($name::$variant),)*
                    _ => None,
                }
            }

            /// The snake_case name used in metric labels and logs.
            pub const fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)*
                }
            }
        }
    };
}

coded_enum! {
    /// What happened to a packet that was not dropped.
    Verdict {
        /// Redirected into a pod on this node.
        DeliveredLocal = 1 => "delivered_local",
        /// Encapsulated in VXLAN towards another node.
        Tunnelled = 2 => "tunnelled",
        /// Left to the kernel stack (unknown destination, non-IPv4, TTL expiring).
        ToStack = 3 => "to_stack",
        /// Delivered into a pod by the kernel stack (host or outside traffic).
        FromStack = 4 => "from_stack",
        /// Sent unencapsulated to another node, the way the kernel's FIB
        /// routes it (native routing).
        Routed = 5 => "routed",
    }
}

coded_enum! {
    /// Why a packet was dropped. Codes start at 130, as Cilium's do, so a
    /// code is a verdict or a drop at a glance.
    DropReason {
        /// Shorter than the headers it announces.
        Truncated = 130 => "truncated",
        /// IPv4 header with IHL below 5 or a total length that does not fit.
        BadIpHeader = 131 => "bad_ip_header",
        /// A pod sent from an address that is not its own.
        InvalidSource = 132 => "invalid_source",
        /// Tunnelled packet without tunnel metadata.
        NoTunnelKey = 133 => "no_tunnel_key",
        /// Tunnelled packet whose inner source the ipcache does not know.
        UnknownTunnelSource = 134 => "unknown_tunnel_source",
        /// Tunnelled packet whose inner source belongs to another cluster or
        /// node than the one that sent it (VNI or outer source mismatch).
        SpoofedSource = 135 => "spoofed_source",
        /// A kernel helper (store, checksum, tunnel key, redirect) failed.
        HelperFailed = 136 => "helper_failed",
        /// The agent has not written this node's configuration yet.
        NotConfigured = 137 => "not_configured",
        /// A service frontend with no ready backend.
        NoBackend = 138 => "no_backend",
        /// Denied by the destination pod's ingress policy.
        PolicyDeniedIngress = 139 => "policy_denied_ingress",
        /// Denied by the source pod's egress policy.
        PolicyDeniedEgress = 140 => "policy_denied_egress",
        /// Larger than the path to its destination carries (the tunnel's
        /// overhead included); answered with ICMP "fragmentation needed",
        /// never fragmented on the underlay.
        FragNeeded = 141 => "frag_needed",
    }
}

coded_enum! {
    /// Direction of a packet relative to the node's pods, as in Cilium's metrics.
    Direction {
        /// Arriving at a pod of this node (from the overlay).
        Ingress = 1 => "ingress",
        /// Leaving a pod of this node.
        Egress = 2 => "egress",
    }
}

const _: () = assert!((Verdict::Routed as u8) < 128);
const _: () = assert!((DropReason::Truncated as u8) >= 128);
