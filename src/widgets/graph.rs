//! A line graph drawn with cairo from a series of values (see `stats_history` for the data and
//! its scaling). Used large on the Performance page and small as sparklines in the VM list.
//! Colours come from the style (the text colour and libadwaita's accent), so the graph reads in
//! light and dark.

use gtk::glib;
use gtk::prelude::*;
use gtk::subclass::prelude::*;

use crate::stats_history::polyline;

mod imp {
    use std::cell::{Cell, RefCell};

    use super::*;

    #[derive(Default)]
    pub struct Graph {
        pub values: RefCell<Vec<f64>>,
        pub max: Cell<f64>,
        pub slots: Cell<usize>,
        pub compact: Cell<bool>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for Graph {
        const NAME: &'static str = "HangarGraph";
        type Type = super::Graph;
        type ParentType = gtk::Widget;

        fn class_init(klass: &mut Self::Class) {
            klass.set_css_name("graph");
            klass.set_accessible_role(gtk::AccessibleRole::Img);
        }
    }

    impl ObjectImpl for Graph {}

    impl WidgetImpl for Graph {
        fn measure(&self, orientation: gtk::Orientation, _for_size: i32) -> (i32, i32, i32, i32) {
            let size = match (self.compact.get(), orientation) {
                (true, gtk::Orientation::Horizontal) => 60,
                (true, _) => 18,
                (false, gtk::Orientation::Horizontal) => 200,
                (false, _) => 100,
            };
            (size, size, -1, -1)
        }

        #[allow(deprecated)] // style_context: GTK 4.8 has no other way to read the style's colours
        fn snapshot(&self, snapshot: &gtk::Snapshot) {
            let widget = self.obj();
            let (width, height) = (widget.width() as f64, widget.height() as f64);
            if width < 2.0 || height < 2.0 {
                return;
            }
            let style = widget.style_context();
            let text = style.color();
            let accent = style
                .lookup_color("accent_color")
                .unwrap_or_else(|| gtk::gdk::RGBA::new(0.21, 0.52, 0.89, 1.0));
            let cr = snapshot.append_cairo(&gtk::graphene::Rect::new(
                0.0,
                0.0,
                width as f32,
                height as f32,
            ));
            let compact = self.compact.get();
            if !compact {
                // Frame and quarter lines, faint in the text colour.
                cr.set_source_rgba(
                    text.red().into(),
                    text.green().into(),
                    text.blue().into(),
                    0.15,
                );
                cr.set_line_width(1.0);
                for quarter in 1..4 {
                    let y = (height * quarter as f64 / 4.0).round() + 0.5;
                    cr.move_to(0.0, y);
                    cr.line_to(width, y);
                }
                cr.rectangle(0.5, 0.5, width - 1.0, height - 1.0);
                let _ = cr.stroke();
            }
            let values = self.values.borrow();
            let max = self.max.get().max(f64::MIN_POSITIVE);
            let points = polyline(&values, max, self.slots.get().max(2), width, height - 1.0);
            let Some(&(first_x, _)) = points.first() else {
                return;
            };
            cr.move_to(first_x, height);
            for (x, y) in &points {
                cr.line_to(*x, *y);
            }
            cr.line_to(points.last().unwrap().0, height);
            cr.close_path();
            cr.set_source_rgba(
                accent.red().into(),
                accent.green().into(),
                accent.blue().into(),
                0.25,
            );
            let _ = cr.fill();
            for (i, (x, y)) in points.iter().enumerate() {
                if i == 0 {
                    cr.move_to(*x, *y);
                } else {
                    cr.line_to(*x, *y);
                }
            }
            cr.set_source_rgba(
                accent.red().into(),
                accent.green().into(),
                accent.blue().into(),
                1.0,
            );
            cr.set_line_width(if compact { 1.0 } else { 1.5 });
            let _ = cr.stroke();
        }
    }
}

glib::wrapper! {
    pub struct Graph(ObjectSubclass<imp::Graph>)
        @extends gtk::Widget,
        @implements gtk::Accessible, gtk::Buildable, gtk::ConstraintTarget;
}

impl Graph {
    /// A graph `slots` samples wide; `compact` for a sparkline.
    pub fn new(slots: usize, compact: bool) -> Graph {
        let graph: Graph = glib::Object::new();
        graph.imp().slots.set(slots);
        graph.imp().compact.set(compact);
        graph.imp().max.set(1.0);
        graph
    }

    /// How many samples span the graph.
    pub fn set_slots(&self, slots: usize) {
        self.imp().slots.set(slots);
        self.queue_draw();
    }

    /// New values (oldest first) on an axis from 0 to `max`.
    pub fn set_values(&self, values: Vec<f64>, max: f64) {
        *self.imp().values.borrow_mut() = values;
        self.imp().max.set(max);
        self.queue_draw();
    }

    pub fn sample_count(&self) -> usize {
        self.imp().values.borrow().len()
    }
}
