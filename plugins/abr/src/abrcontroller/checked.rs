//! Checked use of the properties and signals of the elements `abrcontroller` is pointed at.
//!
//! The elements come from the user (`queue-name`, `capsfilter-name`, ...) and are used from
//! the clock's thread, where a panic cannot unwind and aborts the process: glib's typed
//! `property()`/`set_property()`/`emit_by_name()` panic on a missing property or signal or a
//! different type. These functions check first and say what is wrong instead.

use gst::glib;
use gst::prelude::*;

/// `name (factory)` of an element, or the type name of another object.
fn describe(object: &glib::Object) -> String {
    match object.downcast_ref::<gst::Element>() {
        Some(e) => match e.factory() {
            Some(f) => format!("{} ({})", e.name(), f.name()),
            None => e.name().to_string(),
        },
        None => object.type_().name().to_owned(),
    }
}

/// Reads property `name` as a `T`.
pub(super) fn read<T>(object: &impl IsA<glib::Object>, name: &str) -> Result<T, String>
where
    T: for<'a> glib::value::FromValue<'a> + StaticType + 'static,
{
    let object = object.upcast_ref::<glib::Object>();
    let pspec = object
        .find_property(name)
        .filter(|p| p.flags().contains(glib::ParamFlags::READABLE))
        .ok_or_else(|| format!("{} has no readable property '{name}'", describe(object)))?;
    object.property_value(name).get::<T>().map_err(|_| {
        format!(
            "{}'s property '{name}' is a {}, not a {}",
            describe(object),
            pspec.value_type().name(),
            T::static_type().name()
        )
    })
}

/// Sets property `name` to `value`.
pub(super) fn write(
    object: &impl IsA<glib::Object>,
    name: &str,
    value: &glib::Value,
) -> Result<(), String> {
    writable(object, name, value.type_())?;
    object.set_property_from_value(name, value);
    Ok(())
}

/// Checks that property `name` can be set to a value of type `type_`.
pub(super) fn writable(
    object: &impl IsA<glib::Object>,
    name: &str,
    type_: glib::Type,
) -> Result<(), String> {
    let object = object.upcast_ref::<glib::Object>();
    let pspec = object
        .find_property(name)
        .filter(|p| {
            p.flags().contains(glib::ParamFlags::WRITABLE)
                && !p.flags().contains(glib::ParamFlags::CONSTRUCT_ONLY)
        })
        .ok_or_else(|| format!("{} has no writable property '{name}'", describe(object)))?;
    if !type_.is_a(pspec.value_type()) {
        return Err(format!(
            "{}'s property '{name}' is a {}, not a {}",
            describe(object),
            pspec.value_type().name(),
            type_.name()
        ));
    }
    Ok(())
}

/// Checks that action signal `name` takes arguments of types `args` and returns a `ret`
/// (`glib::Type::UNIT`: nothing), so that `emit_by_name` with those cannot panic.
pub(super) fn signal(
    object: &impl IsA<glib::Object>,
    name: &str,
    args: &[glib::Type],
    ret: glib::Type,
) -> Result<(), String> {
    let object = object.upcast_ref::<glib::Object>();
    let id = glib::subclass::SignalId::lookup(name, object.type_())
        .ok_or_else(|| format!("{} has no signal '{name}'", describe(object)))?;
    let query = id.query();
    let params: Vec<glib::Type> = query.param_types().iter().map(|t| t.type_()).collect();
    let returns = query.return_type().type_();
    let args_fit = params.len() == args.len() && args.iter().zip(&params).all(|(a, p)| a.is_a(*p));
    let ret_fits = if ret == glib::Type::UNIT {
        returns == glib::Type::UNIT
    } else {
        returns.is_a(ret)
    };
    if args_fit && ret_fits {
        Ok(())
    } else {
        Err(format!(
            "{}'s signal '{name}' takes ({}) and returns {}, not ({}) returning {}",
            describe(object),
            params
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(", "),
            returns.name(),
            args.iter().map(|t| t.name()).collect::<Vec<_>>().join(", "),
            ret.name()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_properties_and_signals_are_errors() {
        gst::init().unwrap();
        let queue = gst::ElementFactory::make("queue").build().unwrap();
        assert_eq!(read::<u64>(&queue, "current-level-time"), Ok(0));
        assert!(read::<u32>(&queue, "current-level-time").is_err());
        let mq = gst::ElementFactory::make("multiqueue").build().unwrap();
        assert!(read::<u64>(&mq, "current-level-time").is_err());
        assert!(write(&mq, "caps", &gst::Caps::new_any().to_value()).is_err());
        assert!(write(&queue, "max-size-buffers", &"ten".to_value()).is_err());
        assert!(write(&queue, "max-size-buffers", &10u32.to_value()).is_ok());
        assert_eq!(queue.property::<u32>("max-size-buffers"), 10);
        let rtpbin = gst::ElementFactory::make("rtpbin").build().unwrap();
        let object = glib::Object::static_type();
        assert!(
            signal(
                &rtpbin,
                "get-internal-session",
                &[u32::static_type()],
                object
            )
            .is_ok()
        );
        assert!(signal(&rtpbin, "get-internal-session", &[], object).is_err());
        assert!(signal(&mq, "get-internal-session", &[u32::static_type()], object).is_err());
    }
}
