//! Drawing a scene into pixels.
//!
//! Shapes are filled with 4×4 supersampling per pixel, so edges are anti-aliased the way a
//! camera's optics blur them (hard aliased edges would be a cue no photo has). A soft lighting
//! gradient, per-object colour jitter and faint sensor-like noise keep two scenes with the same
//! description from being pixel-identical, so a model must learn the words, not the pixels.

use image::RgbImage;

use super::scene::{Object, Scene, Shape};

/// Subsamples per pixel side.
const SUPERSAMPLE: usize = 4;

/// Renders `scene` at `size`×`size`; `noise_seed` drives the per-pixel noise.
pub fn render(scene: &Scene, size: u32, noise_seed: u64) -> RgbImage {
    let side = size as f32;
    let bg = scene.background.rgb();
    let (light_x, light_y) = scene.light;
    let mut img = RgbImage::from_fn(size, size, |x, y| {
        let fx = x as f32 / side - 0.5;
        let fy = y as f32 / side - 0.5;
        let shade = light_x * fx + light_y * fy + noise(noise_seed, x, y);
        image::Rgb(bg.map(|c| clamp_level(f32::from(c) + shade)))
    });
    for object in &scene.objects {
        draw(&mut img, object, scene.light, noise_seed);
    }
    img
}

/// The topmost object (the last drawn) covering the point (x, y) in [0, 1]² image
/// coordinates, if any: what a patch of the image shows, for dense labels.
pub fn object_at(objects: &[Object], x: f32, y: f32) -> Option<usize> {
    objects.iter().enumerate().rev().find_map(|(i, o)| {
        let u = (x - o.x) / o.radius;
        let v = (y - o.y) / o.radius;
        contains(o.shape, &outline(o.shape), u, v).then_some(i)
    })
}

fn clamp_level(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// Faint noise in [-3, 3] levels from a hash of the pixel position.
fn noise(seed: u64, x: u32, y: u32) -> f32 {
    let mut h = seed ^ (u64::from(x) << 32 | u64::from(y));
    h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h % 7) as f32 - 3.0
}

fn draw(img: &mut RgbImage, object: &Object, light: (f32, f32), noise_seed: u64) {
    let side = img.width() as f32;
    let (cx, cy, r) = (object.x * side, object.y * side, object.radius * side);
    let x0 = (cx - r - 1.0).floor().max(0.0) as u32;
    let y0 = (cy - r - 1.0).floor().max(0.0) as u32;
    let x1 = ((cx + r + 1.0).ceil() as u32).min(img.width());
    let y1 = ((cy + r + 1.0).ceil() as u32).min(img.height());
    let polygon = outline(object.shape);
    let base = object.color.rgb();
    for y in y0..y1 {
        for x in x0..x1 {
            let mut inside = 0usize;
            for sy in 0..SUPERSAMPLE {
                for sx in 0..SUPERSAMPLE {
                    let px = x as f32 + (sx as f32 + 0.5) / SUPERSAMPLE as f32;
                    let py = y as f32 + (sy as f32 + 0.5) / SUPERSAMPLE as f32;
                    if contains(object.shape, &polygon, (px - cx) / r, (py - cy) / r) {
                        inside += 1;
                    }
                }
            }
            if inside == 0 {
                continue;
            }
            let alpha = inside as f32 / (SUPERSAMPLE * SUPERSAMPLE) as f32;
            let fx = x as f32 / side - 0.5;
            let fy = y as f32 / side - 0.5;
            let shade = light.0 * fx + light.1 * fy + noise(noise_seed ^ 0x5eed, x, y);
            let pixel = img.get_pixel_mut(x, y);
            for c in 0..3 {
                let ink = f32::from(base[c]) + f32::from(object.tint[c]) + shade;
                let under = f32::from(pixel[c]);
                pixel[c] = clamp_level(under + alpha * (ink - under));
            }
        }
    }
}

/// Polygon vertices (unit circumradius, y down) for the shapes drawn as polygons.
fn outline(shape: Shape) -> Vec<(f32, f32)> {
    let on_circle = |k: usize, n: usize, radius: f32| {
        let angle = -std::f32::consts::FRAC_PI_2 + k as f32 * std::f32::consts::TAU / n as f32;
        (radius * angle.cos(), radius * angle.sin())
    };
    match shape {
        Shape::Triangle => (0..3).map(|k| on_circle(k, 3, 1.0)).collect(),
        Shape::Star => (0..10)
            .map(|k| on_circle(k, 10, if k % 2 == 0 { 1.0 } else { 0.45 }))
            .collect(),
        Shape::Circle | Shape::Square | Shape::Diamond => Vec::new(),
    }
}

/// Whether the point (u, v), in units of the circumradius around the centre, is inside.
fn contains(shape: Shape, polygon: &[(f32, f32)], u: f32, v: f32) -> bool {
    match shape {
        Shape::Circle => u * u + v * v <= 1.0,
        // Half-side 0.75 rather than 1/√2: a square of the same circumradius looks smaller
        // than the circle next to it.
        Shape::Square => u.abs() <= 0.75 && v.abs() <= 0.75,
        Shape::Diamond => u.abs() + v.abs() <= 1.0,
        Shape::Triangle | Shape::Star => inside_polygon(polygon, u, v),
    }
}

/// Even-odd rule.
fn inside_polygon(polygon: &[(f32, f32)], u: f32, v: f32) -> bool {
    let mut inside = false;
    let mut j = polygon.len() - 1;
    for i in 0..polygon.len() {
        let (xi, yi) = polygon[i];
        let (xj, yj) = polygon[j];
        if (yi > v) != (yj > v) && u < (xj - xi) * (v - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::scene::{Background, Color, Layout, Size};

    fn scene_with(shape: Shape, color: Color) -> Scene {
        Scene {
            background: Background::Gray,
            objects: vec![Object {
                color,
                shape,
                size: Size::Large,
                x: 0.5,
                y: 0.5,
                radius: 0.3,
                tint: [0; 3],
            }],
            layout: Layout::Single { region: "center" },
            light: (0.0, 0.0),
        }
    }

    #[test]
    fn shapes_cover_their_expected_area() {
        // Fraction of the circumscribed disc each shape fills, from geometry.
        let expected = [
            (Shape::Circle, 1.0),
            (Shape::Square, 4.0 * 0.75 * 0.75 / std::f32::consts::PI),
            (Shape::Diamond, 2.0 / std::f32::consts::PI),
            (
                Shape::Triangle,
                3.0 * 3f32.sqrt() / 4.0 / std::f32::consts::PI,
            ),
        ];
        for (shape, fraction) in expected {
            let img = render(&scene_with(shape, Color::Red), 200, 1);
            let red = img.pixels().filter(|p| p[0] > 170 && p[1] < 90).count() as f32;
            let disc = std::f32::consts::PI * 60.0 * 60.0;
            let got = red / disc;
            assert!(
                (got - fraction).abs() < 0.03,
                "{shape:?}: {got} vs {fraction}"
            );
        }
    }

    #[test]
    fn centre_pixel_has_the_object_colour_and_corner_the_background() {
        let img = render(&scene_with(Shape::Star, Color::Blue), 128, 3);
        let centre = img.get_pixel(64, 64);
        let want = Color::Blue.rgb();
        for c in 0..3 {
            assert!(
                (i32::from(centre[c]) - i32::from(want[c])).abs() <= 3,
                "{centre:?}"
            );
        }
        let corner = img.get_pixel(0, 0);
        assert!((i32::from(corner[0]) - 128).abs() <= 3, "{corner:?}");
    }
}
