fn main() {
    println!("mytimetable-sim");
}
